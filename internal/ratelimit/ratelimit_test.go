package ratelimit

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/orgsync/orgsync/internal/redistest"
)

func TestParse(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]Limit{"50/10s": {50, 10 * time.Second}, "0": {}, " 5/1s ": {5, time.Second}} {
		got, err := Parse(in)
		if err != nil || got != want {
			t.Errorf("Parse(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "50", "50/", "x/10s", "0/10s", "-1/10s", "5/0s", "5/ten"} {
		if _, err := Parse(bad); err == nil {
			t.Errorf("Parse(%q) accepted", bad)
		}
	}
}

// TestSpacingAcrossClients: several limiters (as several workers) on one
// Redis, hammering one account: the slots they get are spaced by the
// interval, so no sliding window ever holds more than the limit.
func TestSpacingAcrossClients(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	lim := Limit{Requests: 20, Window: time.Second}
	var mu sync.Mutex
	var sent []time.Time
	var wg sync.WaitGroup
	deadline := time.Now().Add(2 * time.Second)
	for w := 0; w < 3; w++ {
		l := New(srv.Client(), Config{Account: lim, MaxReserve: 200 * time.Millisecond})
		for g := 0; g < 4; g++ {
			wg.Add(1)
			go func(w, g int) {
				defer wg.Done()
				for time.Now().Before(deadline) {
					ok, wait, err := l.Reserve(context.Background(), "acct", fmt.Sprint(w, "-", g))
					if err != nil {
						t.Error(err)
						return
					}
					if !ok {
						time.Sleep(min(wait, 50*time.Millisecond)) // a caller handing the update back
						continue
					}
					time.Sleep(wait) // the reserved slot
					mu.Lock()
					sent = append(sent, time.Now())
					mu.Unlock()
				}
			}(w, g)
		}
	}
	wg.Wait()
	// Over ~2 s at 20/s less 5 % headroom: about 38 requests; never more than 20 in any 1 s.
	if len(sent) < 30 {
		t.Errorf("only %d requests in 2s at 20/s: the limit is under-used", len(sent))
	}
	maxIn := maxInWindow(sent, time.Second)
	if maxIn > lim.Requests {
		t.Errorf("%d requests in one 1s window, limit %d", maxIn, lim.Requests)
	}
	t.Logf("%d requests in 2s; at most %d in any 1s window (limit %d)", len(sent), maxIn, lim.Requests)
}

func maxInWindow(ts []time.Time, w time.Duration) int {
	s := append([]time.Time(nil), ts...)
	for i := 1; i < len(s); i++ { // insertion sort: small
		for j := i; j > 0 && s[j].Before(s[j-1]); j-- {
			s[j], s[j-1] = s[j-1], s[j]
		}
	}
	best := 0
	for i := range s {
		n := 0
		for j := i; j < len(s) && s[j].Sub(s[i]) < w; j++ {
			n++
		}
		best = max(best, n)
	}
	return best
}

func TestTokenLimitSharedAcrossAccounts(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	l := New(srv.Client(), Config{Token: Limit{Requests: 10, Window: time.Second}, Account: Limit{Requests: 1000, Window: time.Second}, MaxReserve: time.Millisecond})
	taken := 0
	for i := 0; i < 5; i++ {
		for _, acct := range []string{"a", "b", "c"} {
			if ok, _, err := l.Reserve(context.Background(), acct, fmt.Sprint(acct, i)); err != nil {
				t.Fatal(err)
			} else if ok {
				taken++
			}
		}
	}
	// 15 immediate asks across three accounts, token interval ~105 ms: one slot now (plus none within 1 ms).
	if taken != 1 {
		t.Errorf("took %d slots at once under a token limit of 10/s with a 1 ms reserve; want 1", taken)
	}
}

func TestNoLimit(t *testing.T) {
	t.Parallel()
	l := New(nil, Config{})
	ok, wait, err := l.Reserve(context.Background(), "a", "u1")
	if !ok || wait != 0 || err != nil {
		t.Errorf("Reserve without limits = %v, %v, %v", ok, wait, err)
	}
}

// TestWaitGrowsWithTheBacklog: updates denied one after another are told to
// come back one interval apart, in the order they first waited.
func TestWaitGrowsWithTheBacklog(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	l := New(srv.Client(), Config{Account: Limit{Requests: 10, Window: time.Second}, Headroom: -1, MaxReserve: time.Millisecond})
	ctx := context.Background()
	if ok, _, _ := l.Reserve(ctx, "a", "first"); !ok {
		t.Fatal("the first request was refused")
	}
	var waits []time.Duration
	for i := 0; i < waitingCushion; i++ { // the cushion: all told the next slot
		if ok, w, _ := l.Reserve(ctx, "a", fmt.Sprint("c", i)); ok || w > 100*time.Millisecond {
			t.Fatalf("cushion update %d: ok %v wait %s, want a refusal with the next slot", i, ok, w)
		}
	}
	for i := 0; i < 5; i++ {
		ok, w, err := l.Reserve(ctx, "a", fmt.Sprint("u", i))
		if err != nil || ok {
			t.Fatalf("update %d: ok %v err %v, want a refusal", i, ok, err)
		}
		waits = append(waits, w)
	}
	for i := 1; i < len(waits); i++ {
		if d := waits[i] - waits[i-1]; d < 90*time.Millisecond || d > 110*time.Millisecond {
			t.Errorf("waits %v: step %d is %s, want one interval (100ms)", waits, i, d)
		}
	}
	// Asking again keeps an update's place.
	_, again, _ := l.Reserve(ctx, "a", "u0")
	if again > waits[1] {
		t.Errorf("u0 asked again and was told %s, behind u1's %s", again, waits[1])
	}
}
