package trutotest

import (
	"context"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// send PATCHes the server with ctx and returns the status, or the transport error.
func send(ctx context.Context, s *Server, id string) (int, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPatch, s.URL+orgURL(id, ""), strings.NewReader(`{"name":"A"}`))
	if err != nil {
		return 0, err
	}
	req.Header.Set("Authorization", "Bearer "+testToken)
	resp, err := s.Client().Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	_, err = io.ReadAll(resp.Body)
	return resp.StatusCode, err
}

// eventually waits until cond holds, failing after a generous deadline.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.After(10 * time.Second)
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	for !cond() {
		select {
		case <-deadline:
			t.Fatalf("timed out waiting until %s", what)
		case <-tick.C:
		}
	}
}

func TestOutage503(t *testing.T) {
	t.Parallel()
	clk := newClock()
	f := New(testToken, WithClock(clk.now))
	f.StartOutage(Outage503, 30*time.Second)
	w := patch(t, f, orgURL("o1", ""), `{}`, "k")
	wantStatus(t, w, 503)
	if ct := w.Header().Get("Content-Type"); !strings.HasPrefix(ct, "text/html") || !strings.Contains(w.Body.String(), "<html>") {
		t.Errorf("outage answered %q %s, want a proxy's HTML page", ct, w.Body)
	}
	clk.advance(30*time.Second - 1)
	wantStatus(t, patch(t, f, orgURL("o1", ""), `{}`, "k"), 503)
	clk.advance(1) // the outage window has passed
	wantStatus(t, patch(t, f, orgURL("o1", ""), `{}`, "k"), 200)
	f.StartOutage(Outage503, 0) // until ended
	clk.advance(time.Hour)
	wantStatus(t, patch(t, f, orgURL("o1", ""), `{}`, "k2"), 503)
	f.EndOutage()
	wantStatus(t, patch(t, f, orgURL("o1", ""), `{}`, "k2"), 200)
	want := Stats{Requests: 5, ByStatus: map[int]int{200: 2, 503: 3}, Effects: 2}
	if diff := cmp.Diff(want, f.Stats()); diff != "" {
		t.Errorf("stats (-want +got):\n%s", diff)
	}
}

func TestOutageReset(t *testing.T) {
	t.Parallel()
	s := NewServer(testToken)
	defer s.Close()
	s.StartOutage(OutageReset, 0)
	if st, err := send(t.Context(), s, "o1"); err == nil {
		t.Fatalf("reset outage answered %d, want a connection error", st)
	}
	want := Stats{Requests: 1, ByStatus: map[int]int{0: 1}, Unkeyed: 1}
	if diff := cmp.Diff(want, s.Stats()); diff != "" {
		t.Errorf("stats (-want +got):\n%s", diff)
	}
	if r := s.Requests(); len(r) != 1 || r[0].Status != 0 || r[0].Answer != nil {
		t.Errorf("records = %+v, want one with status 0 and no answer", r)
	}
}

func TestOutageHang(t *testing.T) {
	t.Parallel()
	t.Run("client gives up", func(t *testing.T) {
		t.Parallel()
		s := NewServer(testToken)
		defer s.Close()
		s.StartOutage(OutageHang, 0)
		ctx, cancel := context.WithCancel(t.Context())
		errc := make(chan error, 1)
		go func() { _, err := send(ctx, s, "o1"); errc <- err }()
		eventually(t, "the request hangs", func() bool { return s.Hung() == 1 })
		cancel()
		if err := <-errc; !errors.Is(err, context.Canceled) {
			t.Errorf("err = %v, want context.Canceled", err)
		}
		eventually(t, "the hung request is counted", func() bool { return s.Stats().ByStatus[0] == 1 })
		if s := s.Stats(); s.Effects != 0 || s.Requests != 1 {
			t.Errorf("stats = %+v, want 1 request, no effect", s)
		}
	})
	t.Run("outage ends", func(t *testing.T) {
		t.Parallel()
		s := NewServer(testToken)
		defer s.Close()
		s.StartOutage(OutageHang, 0)
		type result struct {
			status int
			err    error
		}
		done := make(chan result, 1)
		go func() { st, err := send(t.Context(), s, "o1"); done <- result{st, err} }()
		eventually(t, "the request hangs", func() bool { return s.Hung() == 1 })
		s.EndOutage()
		if r := <-done; r.err != nil || r.status != 200 {
			t.Errorf("after the outage: %d, %v; want 200", r.status, r.err)
		}
		if s := s.Stats(); s.Effects != 1 {
			t.Errorf("Effects = %d, want 1", s.Effects)
		}
	})
	t.Run("server closes", func(t *testing.T) {
		t.Parallel()
		s := NewServer(testToken)
		s.StartOutage(OutageHang, 0)
		errc := make(chan error, 1)
		go func() { _, err := send(t.Context(), s, "o1"); errc <- err }()
		eventually(t, "the request hangs", func() bool { return s.Hung() == 1 })
		s.Close() // must not wait for the hung request
		if err := <-errc; err == nil {
			t.Error("hung request got an answer after Close, want a connection error")
		}
	})
}

func TestLatency(t *testing.T) {
	t.Parallel()
	t.Run("delays", func(t *testing.T) {
		t.Parallel()
		f := New(testToken, WithFaults(Faults{Latency: Duration(20 * time.Millisecond), LatencyJitter: Duration(5 * time.Millisecond)}))
		start := time.Now()
		wantStatus(t, patch(t, f, orgURL("o1", ""), `{}`, ""), 200)
		if d := time.Since(start); d < 20*time.Millisecond {
			t.Errorf("answered after %v, want at least 20ms", d)
		}
	})
	t.Run("honours the request context", func(t *testing.T) {
		t.Parallel()
		s := NewServer(testToken, WithFaults(Faults{Latency: Duration(time.Hour)}))
		defer s.Close()
		ctx, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
		defer cancel()
		if _, err := send(ctx, s, "o1"); !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("err = %v, want a deadline", err)
		}
		eventually(t, "the abandoned request is counted", func() bool { return s.Stats().ByStatus[0] == 1 })
		if s := s.Stats(); s.Effects != 0 {
			t.Errorf("Effects = %d, want 0", s.Effects)
		}
	})
}
