// Package redistest starts private redis-server processes for tests, each on
// a free loopback port with its own temporary directory, so tests never touch
// a shared Redis and can kill and restart theirs at will. StartCluster
// starts a Redis Cluster of several masters, StartSentinel a master, its
// replica and three sentinels, for the tests of those topologies.
//
// When redis-server is not on PATH the test is skipped with a loud message,
// unless ORGSYNC_REQUIRE_REDIS is set (CI sets it), in which case it fails.
package redistest

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// Server is one private redis-server.
type Server struct {
	t    testing.TB
	Addr string
	dir  string
	aof  bool
	port int
	cmd  *exec.Cmd
	done chan struct{} // closed when cmd has exited

	// conf is a config file's text, written to dir/redis.conf before the
	// first start and named on the command line (a sentinel must be given
	// a file it may rewrite); empty: no config file.
	conf string
	// args follow the defaults on the command line (WithArgs).
	args []string
	// cluster: the server is a Cluster node, and busPort its cluster bus
	// port, picked with the port.
	cluster bool
	busPort int
	// password is asked of every client (requirepass); empty: none.
	password string
}

// Option configures a Server.
type Option func(*Server)

// WithAOF turns on append-only persistence (fsync every write), for tests that
// restart Redis and expect acknowledged writes to survive.
func WithAOF() Option { return func(s *Server) { s.aof = true } }

// WithPassword makes the server ask every client for password (requirepass).
// URL and Client carry it.
func WithPassword(password string) Option { return func(s *Server) { s.password = password } }

// WithArgs adds redis-server arguments after the defaults (a later argument
// wins over an earlier one): WithArgs("--cluster-node-timeout", "2000").
func WithArgs(args ...string) Option {
	return func(s *Server) { s.args = append(s.args, args...) }
}

// portAttempts is how many free ports Start tries: another process (a test
// binary of another package, run at the same time) may take the port between
// freePort closing it and redis-server binding it.
const portAttempts = 5

// Start starts a redis-server and stops it when the test ends.
func Start(t testing.TB, opts ...Option) *Server {
	t.Helper()
	requireRedis(t)
	return launch(t, newServer(t, opts))
}

// requireRedis skips the test, loudly, when redis-server is not on PATH, or
// fails it when ORGSYNC_REQUIRE_REDIS is set.
func requireRedis(t testing.TB) {
	t.Helper()
	if _, err := exec.LookPath("redis-server"); err != nil {
		msg := "redis-server is not on PATH: install it (Debian: apt-get install redis-server) to run the real-Redis tests"
		if os.Getenv("ORGSYNC_REQUIRE_REDIS") != "" {
			t.Fatal(msg)
		}
		t.Skip("SKIPPED: " + msg)
	}
}

// newServer is a Server not yet started, in its own temporary directory.
func newServer(t testing.TB, opts []Option) *Server {
	s := &Server{t: t, dir: t.TempDir()}
	for _, o := range opts {
		o(s)
	}
	return s
}

// launch starts s on a free port, trying another while the one picked turns
// out taken, and kills it when the test ends.
func launch(t testing.TB, s *Server) *Server {
	t.Helper()
	t.Cleanup(s.Kill)
	for attempt := 1; ; attempt++ {
		s.port = pickPort(t)
		s.Addr = "127.0.0.1:" + strconv.Itoa(s.port)
		if s.cluster {
			s.busPort = pickPort(t)
			for s.busPort == s.port {
				s.busPort = pickPort(t)
			}
		}
		err := s.start()
		if err == nil {
			return s
		}
		if !errors.Is(err, errPortTaken) || attempt == portAttempts {
			t.Fatalf("%v\n%s", err, s.log())
		}
		// A cluster node that failed to bind may have saved its
		// ports in nodes.conf: the next attempt starts afresh.
		_ = os.Remove(filepath.Join(s.dir, "nodes.conf"))
	}
}

// URL is the REDIS_URL of the server, with its password if it has one.
func (s *Server) URL() string {
	if s.password != "" {
		return "redis://" + url.UserPassword("", s.password).String() + "@" + s.Addr + "/0"
	}
	return "redis://" + s.Addr + "/0"
}

// Client returns a new client for the server, closed when the test ends.
func (s *Server) Client() *redis.Client {
	c := redis.NewClient(&redis.Options{Addr: s.Addr, Password: s.password})
	s.t.Cleanup(func() { _ = c.Close() })
	return c
}

// errPortTaken: something else listens on the port redis-server was to bind.
var errPortTaken = errors.New("the port is taken")

// start runs redis-server on s.port and waits until it answers. It answers
// only for its own process: a redis-server of another test binary that took
// the port first would answer PING too, and the test would share it.
func (s *Server) start() error {
	var args []string
	if s.conf != "" {
		// Written once: a sentinel rewrites its file with what it learned.
		path := filepath.Join(s.dir, "redis.conf")
		if _, err := os.Stat(path); err != nil {
			if err := os.WriteFile(path, []byte(s.conf), 0o600); err != nil {
				return fmt.Errorf("write %s: %w", path, err)
			}
		}
		args = append(args, path)
	}
	args = append(args,
		"--port", strconv.Itoa(s.port), "--bind", "127.0.0.1", "--dir", s.dir,
		"--save", "", "--daemonize", "no", "--logfile", filepath.Join(s.dir, "redis.log"),
		"--maxmemory-policy", "noeviction",
	)
	if s.aof {
		args = append(args, "--appendonly", "yes", "--appendfsync", "always")
	} else {
		args = append(args, "--appendonly", "no")
	}
	if s.password != "" {
		args = append(args, "--requirepass", s.password)
	}
	if s.cluster {
		args = append(args, "--cluster-enabled", "yes", "--cluster-port", strconv.Itoa(s.busPort),
			"--cluster-config-file", filepath.Join(s.dir, "nodes.conf"))
	}
	args = append(args, s.args...)
	logged := len(s.log()) // a restart's server appends to the log
	s.cmd = exec.Command("redis-server", args...)
	if err := s.cmd.Start(); err != nil {
		return fmt.Errorf("start redis-server: %w", err)
	}
	done := make(chan struct{})
	s.done = done
	go func(cmd *exec.Cmd) { _ = cmd.Wait(); close(done) }(s.cmd)
	pid := strconv.Itoa(s.cmd.Process.Pid)
	c := redis.NewClient(&redis.Options{Addr: s.Addr, Password: s.password, MaxRetries: -1})
	defer c.Close()
	deadline := time.Now().Add(10 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		info, err := c.Info(ctx, "server").Result()
		ours := err == nil && strings.Contains(info, "\nprocess_id:"+pid+"\r")
		if ours {
			err = c.Ping(ctx).Err() // not loading its AOF any more
		}
		cancel()
		select {
		case <-done:
			s.cmd = nil
			if strings.Contains(s.log()[logged:], "ddress already in use") {
				return fmt.Errorf("redis-server on %s: %w", s.Addr, errPortTaken)
			}
			return fmt.Errorf("redis-server on %s exited at start", s.Addr)
		default:
		}
		switch {
		case ours && err == nil:
			return nil
		case err == nil:
			// Another process's server: ours cannot bind and will exit.
			s.Kill()
			return fmt.Errorf("redis-server on %s: another process's server answers there: %w", s.Addr, errPortTaken)
		case time.Now().After(deadline):
			s.Kill()
			return fmt.Errorf("redis-server on %s did not answer within 10s: %v", s.Addr, err)
		}
		time.Sleep(20 * time.Millisecond) // polling a condition: the server coming up
	}
}

// Kill stops the server at once (SIGKILL), as a crash would.
func (s *Server) Kill() {
	if s.cmd == nil || s.cmd.Process == nil {
		return
	}
	_ = s.cmd.Process.Kill()
	<-s.done
	s.cmd = nil
}

// Restart kills the server and starts it again on the same port and
// directory. It fails the test if the port was taken meanwhile.
func (s *Server) Restart() {
	s.t.Helper()
	s.Kill()
	if err := s.start(); err != nil {
		s.t.Fatalf("%v\n%s", err, s.log())
	}
}

func (s *Server) log() string {
	f, err := os.Open(filepath.Join(s.dir, "redis.log"))
	if err != nil {
		return ""
	}
	defer f.Close()
	var out string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		out += sc.Text() + "\n"
	}
	return out
}

// pickPort chooses the port of the next server (a test replaces it).
var pickPort = freePort

func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("find a free port: %v", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// String describes the server for test logs.
func (s *Server) String() string { return fmt.Sprintf("redis-server %s (dir %s)", s.Addr, s.dir) }
