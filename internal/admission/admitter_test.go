package admission

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/orgsync/orgsync/internal/redistest"
)

// TestSeveralAdmittersAdmitEachUpdateOnceInOrder: three admitters (as three
// processes) and their workers on one Redis, 1,500 updates over 10 accounts
// and 150 organizations: every update is started exactly once, each
// organization's updates one at a time and in enqueue order.
func TestSeveralAdmittersAdmitEachUpdateOnceInOrder(t *testing.T) {
	t.Parallel()
	for _, shards := range []int{1, 3} {
		t.Run(fmt.Sprint(shards, "shards"), func(t *testing.T) {
			t.Parallel()
			severalAdmitters(t, shards)
		})
	}
}

func severalAdmitters(t *testing.T, shards int) {
	srv := redistest.Start(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	const accounts, orgsPer, perOrg = 10, 15, 10
	if err := New(srv.Client(), Config{Shards: shards}).Configure(ctx); err != nil {
		t.Fatal(err)
	}
	seed := New(srv.Client(), Config{}) // a producer: follows the recorded count
	want := accounts * orgsPer * perOrg
	for i := range perOrg {
		for a := range accounts {
			for o := range orgsPer {
				org := fmt.Sprintf("A%d/o%d", a, o)
				id := fmt.Sprintf("%s#%d", org, i)
				if _, err := seed.Add(ctx, Item{ID: id, Account: fmt.Sprint("A", a), Org: org, Queue: "q", Payload: []byte(org)}); err != nil {
					t.Fatal(err)
				}
			}
		}
	}

	var mu sync.Mutex
	started := map[string]int{}
	inFlight := map[string]bool{}
	next := map[string]int{} // org -> the sequence number it must see next
	var problems []string
	finished := make(chan struct{}, want)

	for p := range 3 {
		s := New(srv.Client(), Config{MaxAdmitted: 16, Batch: 8, Shards: shards})
		owner := fmt.Sprint("proc-", p)
		leases := NewLeases(s, owner)
		work := make(chan Ticket, 64)
		deliver := func(ctx context.Context, ts []Ticket) (int, error) {
			for i, tk := range ts {
				select {
				case work <- tk:
				case <-ctx.Done():
					return i, ctx.Err()
				}
			}
			return len(ts), nil
		}
		go NewAdmitter(s, leases, deliver, nil).Run(ctx)
		for range 4 { // a worker process's concurrency
			go func() {
				for tk := range work {
					org := string(tk.Payload)
					account, _, _ := strings.Cut(org, "/")
					_, ok, err := s.Start(ctx, account, tk.ID, tk.Gen, owner)
					if err != nil || !ok {
						continue // stale tickets are expected only after a lease ran out
					}
					var seq int
					fmt.Sscanf(tk.ID[len(org)+1:], "%d", &seq)
					mu.Lock()
					started[tk.ID]++
					if inFlight[org] {
						problems = append(problems, "two updates of "+org+" in flight")
					}
					if seq != next[org] {
						problems = append(problems, fmt.Sprintf("%s started before #%d of its organization", tk.ID, next[org]))
					}
					inFlight[org], next[org] = true, seq+1
					mu.Unlock()
					mu.Lock()
					inFlight[org] = false
					mu.Unlock()
					if _, err := s.Finish(ctx, account, tk.ID, tk.Gen); err != nil {
						mu.Lock()
						problems = append(problems, err.Error())
						mu.Unlock()
					}
					finished <- struct{}{}
				}
			}()
		}
	}
	deadline := time.After(60 * time.Second)
	for range want {
		select {
		case <-finished:
		case <-deadline:
			mu.Lock()
			t.Fatalf("only %d of %d updates finished within 60s", len(started), want)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	for _, p := range problems {
		t.Error(p)
	}
	for id, n := range started {
		if n != 1 {
			t.Errorf("%s started %d times", id, n)
		}
	}
	if len(started) != want {
		t.Errorf("%d updates started; want %d", len(started), want)
	}
	st, err := seed.Stats(ctx)
	if err != nil || st.Admitted != 0 || st.Running != 0 || st.Scheduled != 0 || st.Shards != shards {
		t.Errorf("stats after the run: %+v, %v; want nothing left, %d shards", st, err, shards)
	}
}

// TestAnIdleAdmitterIsWokenByAnEnqueue: nothing waiting, the admitter
// asleep; an Add wakes it (not its timer) and the update is handed over.
func TestAnIdleAdmitterIsWokenByAnEnqueue(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	s := New(srv.Client(), Config{})
	got := make(chan Ticket, 1)
	a := NewAdmitter(s, NewLeases(s, "p"), handTo(got), nil)
	a.reap = time.Hour // only a wake-up can start a pass
	go a.Run(ctx)
	waitFor(t, func() bool { p, _ := a.Passes(); return p >= 1 }) // asleep after its first pass
	if _, err := s.Add(ctx, Item{ID: "u1", Account: "A", Org: "A/o", Queue: "q"}); err != nil {
		t.Fatal(err)
	}
	select {
	case tk := <-got:
		if tk.ID != "u1" {
			t.Fatalf("handed %q", tk.ID)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the enqueue did not wake the admitter")
	}
	if _, woken := a.Passes(); woken == 0 {
		t.Error("the update went without a wake-up")
	}
}

// TestKilledWorkersUpdatesGoAgain: a worker starts an update and dies (no
// heartbeat); another process's admitter puts it back once the lease runs
// out and hands it over under a new generation.
func TestKilledWorkersUpdatesGoAgain(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	s := New(srv.Client(), Config{Lease: 500 * time.Millisecond})
	if _, err := s.Add(ctx, Item{ID: "u1", Account: "A", Org: "A/o", Queue: "q"}); err != nil {
		t.Fatal(err)
	}
	first, _, err := s.Admit(ctx, "doomed")
	if err != nil || len(first) != 1 {
		t.Fatalf("Admit = %v, %v", first, err)
	}
	if _, ok, _ := s.Start(ctx, "", "u1", first[0].Gen, "doomed"); !ok {
		t.Fatal("Start refused")
	}
	got := make(chan Ticket, 1)
	a := NewAdmitter(s, NewLeases(s, "survivor"), handTo(got), nil)
	a.reap = 100 * time.Millisecond
	go a.Run(ctx)
	select {
	case tk := <-got:
		if tk.ID != "u1" || tk.Gen <= first[0].Gen {
			t.Fatalf("handed %+v; want u1 under a generation after %d", tk, first[0].Gen)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the dead worker's update did not go again")
	}
	if _, ok, _ := s.Start(ctx, "", "u1", first[0].Gen, "doomed"); ok {
		t.Error("the dead worker's ticket is still accepted")
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 10s")
		}
		time.Sleep(5 * time.Millisecond) // polling a condition, not timing one
	}
}

// TestGateLetsOnlyTheProbeThrough: while the gate (the circuit) is closed to
// all but probes, each pass admits one update, marked as the probe.
func TestGateLetsOnlyTheProbeThrough(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	s := New(srv.Client(), Config{})
	for i := range 3 {
		if _, err := s.Add(ctx, Item{ID: fmt.Sprint("u", i), Account: "A", Org: fmt.Sprint("A/o", i), Queue: "q"}); err != nil {
			t.Fatal(err)
		}
	}
	var mu sync.Mutex
	var passes int
	got := make(chan Ticket, 3)
	a := NewAdmitter(s, NewLeases(s, "p"), handTo(got), nil)
	a.SetGate(func(context.Context) (bool, bool, time.Duration, error) {
		mu.Lock()
		defer mu.Unlock()
		passes++
		if passes%2 == 1 {
			return false, false, 10 * time.Millisecond, nil // open, no probe due
		}
		return true, true, 0, nil
	})
	go a.Run(ctx)
	for range 3 {
		select {
		case tk := <-got:
			if !tk.Probe {
				t.Errorf("%s went through an open gate without being the probe", tk.ID)
			}
			if _, err := s.Finish(ctx, "", tk.ID, tk.Gen); err != nil {
				t.Fatal(err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("the probes did not come")
		}
	}
}

// handTo is a deliver func that passes every ticket to ch.
func handTo(ch chan<- Ticket) Deliver {
	return func(_ context.Context, ts []Ticket) (int, error) {
		for _, tk := range ts {
			ch <- tk
		}
		return len(ts), nil
	}
}
