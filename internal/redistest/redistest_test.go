package redistest

import (
	"context"
	"testing"
)

// TestStartSkipsAPortAnotherServerTook: when another process's redis-server
// already listens on the port picked (another test binary took it between
// the pick and the bind), Start must not hand that server to the test, which
// would then share it; it picks another port.
func TestStartSkipsAPortAnotherServerTook(t *testing.T) {
	other := Start(t)
	taken := []int{other.port}
	pickPort = func(t testing.TB) int {
		if len(taken) > 0 {
			p := taken[0]
			taken = taken[1:]
			return p
		}
		return freePort(t)
	}
	t.Cleanup(func() { pickPort = freePort })

	s := Start(t)
	if s.Addr == other.Addr {
		t.Fatalf("Start returned %s, where another server already listened", s.Addr)
	}
	ctx := context.Background()
	if err := s.Client().Set(ctx, "mine", "1", 0).Err(); err != nil {
		t.Fatal(err)
	}
	if n := other.Client().Exists(ctx, "mine").Val(); n != 0 {
		t.Fatal("a write to the new server landed in the other one: they are the same server")
	}
}

// TestRestartKeepsAddressAndData: a server with AOF keeps its port and what
// was written across Kill and Restart.
func TestRestartKeepsAddressAndData(t *testing.T) {
	s := Start(t, WithAOF())
	ctx := context.Background()
	c := s.Client()
	if err := c.Set(ctx, "k", "v", 0).Err(); err != nil {
		t.Fatal(err)
	}
	addr := s.Addr
	s.Kill()
	if err := c.Ping(ctx).Err(); err == nil {
		t.Fatal("the killed server still answers")
	}
	s.Restart()
	if s.Addr != addr {
		t.Fatalf("restarted on %s, want %s", s.Addr, addr)
	}
	if v, err := c.Get(ctx, "k").Result(); err != nil || v != "v" {
		t.Fatalf("after the restart k = %q, %v; want v", v, err)
	}
}
