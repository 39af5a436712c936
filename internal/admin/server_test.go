package admin

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func TestServerLimits(t *testing.T) {
	t.Parallel()
	type limits struct {
		ReadHeader, Read, Write, Idle time.Duration
		MaxHeaderBytes, MaxConns      int
	}
	tests := []struct {
		maxConns int
		want     limits
	}{
		{0, limits{5 * time.Second, 15 * time.Second, time.Minute, 30 * time.Second, 64 << 10, DefaultMaxConns}},
		{-1, limits{5 * time.Second, 15 * time.Second, time.Minute, 30 * time.Second, 64 << 10, DefaultMaxConns}},
		{7, limits{5 * time.Second, 15 * time.Second, time.Minute, 30 * time.Second, 64 << 10, 7}},
	}
	for _, tt := range tests {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		s := NewServer(ln, http.NotFoundHandler(), tt.maxConns, nil)
		_ = ln.Close()
		h := s.http
		got := limits{h.ReadHeaderTimeout, h.ReadTimeout, h.WriteTimeout, h.IdleTimeout, h.MaxHeaderBytes, s.ln.max}
		if diff := cmp.Diff(tt.want, got); diff != "" {
			t.Errorf("NewServer(maxConns %d) limits (-want +got):\n%s", tt.maxConns, diff)
		}
	}
}

// rawConn is one client connection speaking HTTP/1.1 with keep-alive.
type rawConn struct {
	t *testing.T
	c net.Conn
	r *bufio.Reader
}

func dial(t *testing.T, addr string) *rawConn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return &rawConn{t: t, c: c, r: bufio.NewReader(c)}
}

func (rc *rawConn) send(path string) error {
	_, err := io.WriteString(rc.c, "GET "+path+" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
	return err
}

// read reads one answer, waiting at most d.
func (rc *rawConn) read(d time.Duration) (int, string, error) {
	_ = rc.c.SetReadDeadline(time.Now().Add(d))
	resp, err := http.ReadResponse(rc.r, nil)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

// get sends path and wants 200.
func (rc *rawConn) get(path string) string {
	rc.t.Helper()
	if err := rc.send(path); err != nil {
		rc.t.Fatalf("GET %s: %v", path, err)
	}
	code, body, err := rc.read(10 * time.Second)
	if err != nil || code != 200 {
		rc.t.Fatalf("GET %s: %d %q %v; want 200", path, code, body, err)
	}
	return body
}

// waitUntil polls cond until it holds, failing after 10 s.
func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond) // polling a condition
	}
}

// quietConns counts the connections s holds that serve no request.
func quietConns(s *Server) int {
	s.ln.mu.Lock()
	defer s.ln.mu.Unlock()
	return len(s.ln.quiet)
}

// TestServerClosesSilentConnectionAtCap holds a server's only place with a
// connection that never sends a request: a probe arriving next is answered.
func TestServerClosesSilentConnectionAtCap(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := NewServer(ln, http.HandlerFunc(func(rw http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(rw, "ok") }), 1, nil)
	go func() { _ = s.Serve() }()
	t.Cleanup(func() { _ = s.Shutdown(context.Background()) })
	silent := dial(t, ln.Addr().String())
	waitUntil(t, "the silent connection to be held", func() bool { return quietConns(s) == 1 })
	probe := dial(t, ln.Addr().String())
	if got := probe.get("/readyz"); got != "ok" {
		t.Errorf("probe at the cap got %q", got)
	}
	if _, _, err := silent.read(10 * time.Second); err == nil {
		t.Error("the silent connection got an answer; want it closed to make room")
	}
}

// TestServerCapsConnections runs a server capped at 2 connections: a
// newcomer at the cap replaces the longest-idle connection, a connection
// still held keeps working, and when both are busy the newcomer waits until
// one is done.
func TestServerCapsConnections(t *testing.T) {
	t.Parallel()
	entered, release := make(chan struct{}, 4), make(chan struct{})
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(rw http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(rw, "ok") })
	mux.HandleFunc("GET /block", func(rw http.ResponseWriter, _ *http.Request) {
		entered <- struct{}{}
		<-release
		_, _ = io.WriteString(rw, "done")
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := NewServer(ln, mux, 2, nil)
	served := make(chan error, 1)
	go func() { served <- s.Serve() }()
	addr := ln.Addr().String()
	quiet := func() int { return quietConns(s) }

	a := dial(t, addr)
	a.get("/healthz")
	waitUntil(t, "the first connection to be idle", func() bool { return quiet() == 1 })
	b := dial(t, addr)
	if err := b.send("/block"); err != nil {
		t.Fatal(err)
	}
	<-entered

	c := dial(t, addr)
	if got := c.get("/healthz"); got != "ok" {
		t.Errorf("newcomer at the cap got %q", got)
	}
	_ = a.send("/healthz")
	if _, _, err := a.read(10 * time.Second); err == nil {
		t.Error("the idle connection still answers after a newcomer at the cap; want it closed to make room")
	}
	if got := c.get("/healthz"); got != "ok" {
		t.Errorf("a held connection at the cap got %q", got)
	}

	if err := c.send("/block"); err != nil {
		t.Fatal(err)
	}
	<-entered
	d := dial(t, addr)
	if err := d.send("/healthz"); err != nil {
		t.Fatal(err)
	}
	if code, _, err := d.read(300 * time.Millisecond); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("a newcomer while both held connections are busy got %d, %v; want it to wait", code, err)
	}
	close(release)
	for _, rc := range []*rawConn{b, c} {
		if code, body, err := rc.read(10 * time.Second); code != 200 || body != "done" || err != nil {
			t.Errorf("blocked request: %d %q %v", code, body, err)
		}
	}
	if code, body, err := d.read(10 * time.Second); code != 200 || body != "ok" || err != nil {
		t.Errorf("the waiting newcomer, once a connection was free: %d %q %v; want 200 ok", code, body, err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := s.Shutdown(ctx); err != nil {
		t.Errorf("Shutdown: %v", err)
	}
	if err := <-served; !errors.Is(err, http.ErrServerClosed) {
		t.Errorf("Serve returned %v, want http.ErrServerClosed", err)
	}
}
