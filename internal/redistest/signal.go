package redistest

import (
	"fmt"
	"os"
	"strings"
	"time"
)

// Pause stops the server's process (SIGSTOP) and waits until the kernel
// says it is stopped: it answers nothing and reads nothing (a replica does
// not notice its master's link closing, nor reconnect) until Resume, while
// its sockets stay open and other processes' connections to it are still
// accepted. Whatever happens, the process is continued (SIGCONT) when the
// test ends, before the server is killed, so no stopped process is left
// behind. It fails the test if the server is not running, and skips it
// where processes cannot be stopped (not Unix).
func (s *Server) Pause() {
	s.t.Helper()
	if sigStop == nil {
		s.t.Skip("SKIPPED: pausing redis-server needs SIGSTOP, which this system does not have")
	}
	if s.cmd == nil || s.cmd.Process == nil {
		s.t.Fatalf("pause %s: not running", s)
	}
	s.t.Cleanup(s.Resume) // runs before launch's Kill: cleanups run last first
	if err := s.cmd.Process.Signal(sigStop); err != nil {
		s.t.Fatalf("pause %s: SIGSTOP: %v", s, err)
	}
	if err := s.waitState(true); err != nil {
		s.t.Fatalf("pause %s: %v", s, err)
	}
}

// Resume continues the process Pause stopped (SIGCONT) and waits until it
// runs again. It does nothing to a server that is not running, and a running
// one ignores it.
func (s *Server) Resume() {
	if sigCont == nil || s.cmd == nil || s.cmd.Process == nil {
		return
	}
	if err := s.cmd.Process.Signal(sigCont); err != nil {
		return // it has exited
	}
	if err := s.waitState(false); err != nil {
		s.t.Errorf("resume %s: %v", s, err)
	}
}

// waitState waits up to a second until /proc says the process is stopped
// (state T) or not. Without /proc (not Linux) it returns at once: the
// signal was sent, and is delivered before the process runs again.
func (s *Server) waitState(stopped bool) error {
	path := fmt.Sprintf("/proc/%d/stat", s.cmd.Process.Pid)
	deadline := time.Now().Add(time.Second)
	for {
		b, err := os.ReadFile(path)
		if err != nil {
			return nil // no /proc, or the process has exited
		}
		// The state follows the command name, which is in parentheses
		// and may hold any: it is the field after the last ')'.
		st := ""
		if i := strings.LastIndexByte(string(b), ')'); i >= 0 {
			if f := strings.Fields(string(b[i+1:])); len(f) > 0 {
				st = f[0]
			}
		}
		if (st == "T") == stopped {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("process %d in state %q a second after the signal; want stopped %v", s.cmd.Process.Pid, st, stopped)
		}
		time.Sleep(time.Millisecond) // polling the kernel's view of a signal's delivery
	}
}
