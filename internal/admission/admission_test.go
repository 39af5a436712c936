package admission

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/google/go-cmp/cmp"
	"github.com/redis/go-redis/v9"

	"github.com/orgsync/orgsync/internal/ratelimit"
	"github.com/orgsync/orgsync/internal/redistest"
)

// clock is a settable test clock.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) set(t time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if t.After(c.t) {
		c.t = t
	}
}
func (c *clock) add(d time.Duration) { c.set(c.now().Add(d)) }

var t0 = time.UnixMilli(1_800_000_000_000)

// backends runs each rule test on a real Redis (the scripts' home) and on
// miniredis (the embedded demo's).
func backends(t *testing.T, test func(t *testing.T, rdb redis.UniversalClient)) {
	t.Run("redis", func(t *testing.T) {
		t.Parallel()
		test(t, redistest.Start(t).Client())
	})
	t.Run("miniredis", func(t *testing.T) {
		t.Parallel()
		m := miniredis.RunT(t)
		c := redis.NewClient(&redis.Options{Addr: m.Addr()})
		t.Cleanup(func() { _ = c.Close() })
		test(t, c)
	})
}

func newTest(t *testing.T, rdb redis.UniversalClient, c Config) (*Scheduler, *clock) {
	t.Helper()
	clk := &clock{t: t0}
	if c.Headroom == 0 {
		c.Headroom = -1 // exact intervals keep the arithmetic readable
	}
	return New(rdb, c, WithClock(clk.now)), clk
}

func add(t *testing.T, s *Scheduler, id, account, org string) {
	t.Helper()
	seq, err := s.Add(context.Background(), Item{ID: id, Account: account, Org: account + "/" + org, Queue: "q", Payload: []byte("p-" + id)})
	if err != nil || seq == 0 {
		t.Fatalf("Add(%s) = %d, %v", id, seq, err)
	}
}

func admit(t *testing.T, s *Scheduler) ([]string, time.Time) {
	t.Helper()
	tickets, next, err := s.Admit(context.Background(), "proc-1")
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, tk := range tickets {
		if string(tk.Payload) != "p-"+tk.ID || tk.Queue != "q" {
			t.Errorf("ticket %+v: payload or queue lost", tk)
		}
		ids = append(ids, tk.ID)
	}
	return ids, next
}

// finish starts and finishes each id, as a worker completing them would.
func finish(t *testing.T, s *Scheduler, ids ...string) {
	t.Helper()
	ctx := context.Background()
	for _, id := range ids {
		if _, err := s.Finish(ctx, "", id, AnyGeneration); err != nil {
			t.Fatal(err)
		}
	}
}

func TestOrganizationOneAtATimeInOrder(t *testing.T) {
	t.Parallel()
	backends(t, func(t *testing.T, rdb redis.UniversalClient) {
		s, _ := newTest(t, rdb, Config{})
		add(t, s, "u1", "A", "o1")
		add(t, s, "u2", "A", "o1")
		add(t, s, "u3", "A", "o1")
		add(t, s, "u4", "A", "o2")
		got, next := admit(t, s)
		if diff := cmp.Diff([]string{"u1", "u4"}, got); diff != "" {
			t.Fatalf("first pass (-want +got):\n%s", diff)
		}
		if next != Never {
			t.Errorf("next = %v, want Never: nothing else may go until u1 finishes", next)
		}
		if got, _ := admit(t, s); len(got) != 0 {
			t.Fatalf("admitted %v while u1 is in flight", got)
		}
		finish(t, s, "u1")
		got, _ = admit(t, s)
		if diff := cmp.Diff([]string{"u2"}, got); diff != "" {
			t.Fatalf("after u1 (-want +got):\n%s", diff)
		}
		finish(t, s, "u2", "u4")
		got, _ = admit(t, s)
		if diff := cmp.Diff([]string{"u3"}, got); diff != "" {
			t.Fatalf("after u2 (-want +got):\n%s", diff)
		}
	})
}

func TestDuplicateAddChangesNothing(t *testing.T) {
	t.Parallel()
	backends(t, func(t *testing.T, rdb redis.UniversalClient) {
		s, _ := newTest(t, rdb, Config{})
		add(t, s, "u1", "A", "o1")
		seq, err := s.Add(context.Background(), Item{ID: "u1", Account: "B", Org: "B/x", Queue: "q2"})
		if err != nil || seq != 0 {
			t.Fatalf("second Add = %d, %v; want 0 (duplicate)", seq, err)
		}
		st, _ := s.Account(context.Background(), "B")
		if st.Waiting != 0 {
			t.Errorf("account B counts %d waiting after a refused duplicate", st.Waiting)
		}
	})
}

func TestAccountLimitSpacesAdmissions(t *testing.T) {
	t.Parallel()
	backends(t, func(t *testing.T, rdb redis.UniversalClient) {
		s, clk := newTest(t, rdb, Config{Account: ratelimit.Limit{Requests: 10, Window: time.Second}})
		for i := range 5 {
			add(t, s, fmt.Sprint("u", i), "A", fmt.Sprint("o", i))
		}
		got, next := admit(t, s)
		if len(got) != 1 || !next.Equal(t0.Add(100*time.Millisecond)) {
			t.Fatalf("admitted %v, next %v; want one, next at +100ms", got, next.Sub(t0))
		}
		clk.add(98 * time.Millisecond) // within a millisecond counts as now
		if got, _ := admit(t, s); len(got) != 0 {
			t.Fatalf("admitted %v before the slot", got)
		}
		clk.add(2 * time.Millisecond)
		if got, _ := admit(t, s); len(got) != 1 {
			t.Fatalf("admitted %v at the slot; want one", got)
		}
	})
}

func TestTokenLimitTakesAccountsInTurn(t *testing.T) {
	t.Parallel()
	backends(t, func(t *testing.T, rdb redis.UniversalClient) {
		s, clk := newTest(t, rdb, Config{Token: ratelimit.Limit{Requests: 5, Window: time.Second}})
		for _, a := range []string{"A", "B", "C"} {
			for i := range 3 {
				add(t, s, fmt.Sprint(a, i), a, fmt.Sprint("o", i))
			}
		}
		order := oneAtATime(t, s, clk, 9)
		want := []string{"A0", "B0", "C0", "A1", "B1", "C1", "A2", "B2", "C2"}
		if diff := cmp.Diff(want, order); diff != "" {
			t.Errorf("order (-want +got):\n%s", diff)
		}
		if got := clk.now().Sub(t0); got != 8*200*time.Millisecond {
			t.Errorf("9 admissions took %v; want 8 intervals of 200ms", got)
		}
	})
}

// oneAtATime admits until n are in, moving the clock to each pass's next
// time, and fails if a pass admits more than one (a limit of one slot at a
// time) or stalls.
func oneAtATime(t *testing.T, s *Scheduler, clk *clock, n int) []string {
	t.Helper()
	var order []string
	for len(order) < n {
		got, next := admit(t, s)
		if len(got) > 1 {
			t.Fatalf("admitted %v at once under the limit", got)
		}
		order = append(order, got...)
		if len(order) < n {
			if len(got) == 0 && !next.After(clk.now()) {
				t.Fatalf("nothing admitted and next %v is not later than now %v", next, clk.now())
			}
			clk.set(next)
		}
	}
	return order
}

// TestBacklogDelaysNoOtherAccount: one account's backlog of 20,000, then 10
// accounts with 2 each, at 10/s per account: the small accounts are done
// within their own limit (their second update one interval after the first),
// whatever the backlog. (Real Redis only: miniredis takes seconds to load it.)
func TestBacklogDelaysNoOtherAccount(t *testing.T) {
	t.Parallel()
	func(test func(t *testing.T, rdb redis.UniversalClient)) { test(t, redistest.Start(t).Client()) }(func(t *testing.T, rdb redis.UniversalClient) {
		s, clk := newTest(t, rdb, Config{Account: ratelimit.Limit{Requests: 10, Window: time.Second}, Batch: 64, MaxAdmitted: 1000})
		ctx := context.Background()
		if err := script.Load(ctx, rdb).Err(); err != nil {
			t.Fatal(err)
		}
		pipe := rdb.Pipeline()
		for i := range 20000 {
			script.Run(ctx, pipe, []string{shardBase("orgsync", 0) + "accts"}, "add", t0.UnixMilli(), "1", fmt.Sprint("big", i), "BIG", fmt.Sprint("BIG/o", i), "q", 0, "p-big", 0)
		}
		if _, err := pipe.Exec(ctx); err != nil {
			t.Fatal(err)
		}
		for a := range 10 {
			for i := range 2 {
				add(t, s, fmt.Sprint("s", a, "-", i), fmt.Sprint("small", a), fmt.Sprint("o", i))
			}
		}
		done := map[string]time.Time{}
		for len(done) < 20 {
			tickets, next, err := s.Admit(ctx, "p")
			if err != nil {
				t.Fatal(err)
			}
			for _, tk := range tickets {
				if tk.ID[0] == 's' {
					done[tk.ID] = clk.now()
				}
				finish(t, s, tk.ID)
			}
			clk.set(next)
		}
		for id, at := range done {
			if d := at.Sub(t0); d > 100*time.Millisecond {
				t.Errorf("%s admitted %v after enqueue; its own limit allows it by 100ms", id, d)
			}
		}
	})
}

func TestParkFreezesTheLaneAndResumeReleasesIt(t *testing.T) {
	t.Parallel()
	backends(t, func(t *testing.T, rdb redis.UniversalClient) {
		ctx := context.Background()
		s, _ := newTest(t, rdb, Config{})
		add(t, s, "a1", "A", "o1")
		add(t, s, "b1", "B", "o1")
		if err := s.Park(ctx, "A", "401 from the provider", 401); err != nil {
			t.Fatal(err)
		}
		add(t, s, "a2", "A", "o2") // joins a parked lane: stays frozen
		got, next := admit(t, s)
		if diff := cmp.Diff([]string{"b1"}, got); diff != "" {
			t.Fatalf("admitted (-want +got):\n%s", diff)
		}
		if next != Never {
			t.Errorf("next = %v; a parked account must not be looked at again", next)
		}
		st, _ := s.Stats(ctx)
		if st.Scheduled != 0 || st.Parked != 1 {
			t.Errorf("stats %+v: want no account scheduled, one parked", st)
		}
		acct, _ := s.Account(ctx, "A")
		if acct.Parked == "" || acct.Waiting != 2 || acct.ReadyOrgs != 2 {
			t.Errorf("account A %+v: want parked with 2 waiting in 2 ready orgs", acct)
		}
		if ok, err := s.Resume(ctx, "A"); !ok || err != nil {
			t.Fatalf("Resume = %v, %v", ok, err)
		}
		got, _ = admit(t, s)
		if diff := cmp.Diff([]string{"a1", "a2"}, got); diff != "" {
			t.Errorf("after resume (-want +got):\n%s", diff)
		}
	})
}

func TestParkAllHoldsEveryAccount(t *testing.T) {
	t.Parallel()
	backends(t, func(t *testing.T, rdb redis.UniversalClient) {
		ctx := context.Background()
		s, _ := newTest(t, rdb, Config{})
		add(t, s, "a1", "A", "o1")
		if err := s.Park(ctx, "", "the API token was rejected", 401); err != nil {
			t.Fatal(err)
		}
		if got, next := admit(t, s); len(got) != 0 || next != Never {
			t.Fatalf("admitted %v (next %v) with every account parked", got, next)
		}
		if ok, _ := s.Resume(ctx, ""); !ok {
			t.Fatal("Resume of the all-accounts park found none")
		}
		if got, _ := admit(t, s); len(got) != 1 {
			t.Fatalf("admitted %v after resume; want a1", got)
		}
	})
}

func TestHoldWaitsTheWholeLane(t *testing.T) {
	t.Parallel()
	backends(t, func(t *testing.T, rdb redis.UniversalClient) {
		ctx := context.Background()
		s, clk := newTest(t, rdb, Config{})
		add(t, s, "a1", "A", "o1")
		add(t, s, "a2", "A", "o2")
		if err := s.Hold(ctx, "A", t0.Add(5*time.Second), "429", 429); err != nil {
			t.Fatal(err)
		}
		if err := s.Hold(ctx, "A", t0.Add(time.Second), "429", 429); err != nil { // a shorter hold never shortens it
			t.Fatal(err)
		}
		got, next := admit(t, s)
		if len(got) != 0 || !next.Equal(t0.Add(5*time.Second)) {
			t.Fatalf("admitted %v, next %v; want none until +5s", got, next.Sub(t0))
		}
		clk.set(next)
		if got, _ := admit(t, s); len(got) != 2 {
			t.Fatalf("admitted %v at the hold's end; want both", got)
		}
	})
}

func TestRetryWaitsItsTimeAndRefusesAStaleGeneration(t *testing.T) {
	t.Parallel()
	backends(t, func(t *testing.T, rdb redis.UniversalClient) {
		ctx := context.Background()
		s, clk := newTest(t, rdb, Config{})
		add(t, s, "u1", "A", "o1")
		add(t, s, "u2", "A", "o1")
		tickets, _, _ := s.Admit(ctx, "p")
		if len(tickets) != 1 || tickets[0].ID != "u1" {
			t.Fatalf("tickets %+v; want u1", tickets)
		}
		gen := tickets[0].Gen
		if _, ok, _ := s.Start(ctx, "", "u1", gen, "p"); !ok {
			t.Fatal("Start refused a current ticket")
		}
		if ok, _ := s.Retry(ctx, "", "u1", 0, t0); ok {
			t.Fatal("Retry accepted a stale generation")
		}
		if ok, _ := s.Retry(ctx, "", "u1", gen, t0.Add(3*time.Second)); !ok {
			t.Fatal("Retry refused the current generation")
		}
		got, next := admit(t, s)
		if len(got) != 0 || !next.Equal(t0.Add(3*time.Second)) {
			t.Fatalf("admitted %v (u2 must not pass u1), next %v; want none until +3s", got, next.Sub(t0))
		}
		clk.set(next)
		if got, _ := admit(t, s); !cmp.Equal(got, []string{"u1"}) {
			t.Fatalf("admitted %v; want u1 again", got)
		}
	})
}

func TestLeaseRunOutPutsBackUnderANewGeneration(t *testing.T) {
	t.Parallel()
	backends(t, func(t *testing.T, rdb redis.UniversalClient) {
		ctx := context.Background()
		s, clk := newTest(t, rdb, Config{Lease: 10 * time.Second})
		add(t, s, "u1", "A", "o1")
		tickets, _, _ := s.Admit(ctx, "dead-worker")
		if _, ok, _ := s.Start(ctx, "", "u1", tickets[0].Gen, "dead-worker"); !ok {
			t.Fatal("Start refused")
		}
		clk.add(9 * time.Second)
		if n, _ := s.Reap(ctx, 100); n != 0 {
			t.Fatalf("reaped %d before the lease ran out", n)
		}
		clk.add(2 * time.Second)
		if n, _ := s.Reap(ctx, 100); n != 1 {
			t.Fatalf("reaped %d; want u1", n)
		}
		if _, ok, _ := s.Start(ctx, "", "u1", tickets[0].Gen, "dead-worker"); ok {
			t.Fatal("the dead worker's stale ticket was accepted")
		}
		again, _, _ := s.Admit(ctx, "live-worker")
		if len(again) != 1 || again[0].Gen <= tickets[0].Gen {
			t.Fatalf("re-admitted %+v; want u1 under a newer generation than %d", again, tickets[0].Gen)
		}
		if ok, _ := s.Finish(ctx, "", "u1", tickets[0].Gen); ok {
			t.Error("the dead worker's run finished the update admitted again since")
		}
		if lost, _ := s.Extend(ctx, 0, "dead-worker", []string{"u1"}); !cmp.Equal(lost, []string{"u1"}) {
			t.Errorf("Extend by the old owner lost %v; want u1", lost)
		}
		if _, ok, _ := s.Start(ctx, "", "u1", again[0].Gen, "live-worker"); !ok {
			t.Fatal("the live worker could not start the update admitted again")
		}
		if lost, _ := s.Extend(ctx, 0, "live-worker", []string{"u1"}); len(lost) != 0 {
			t.Errorf("Extend by the running owner lost %v", lost)
		}
	})
}

func TestMaxAdmittedWaitsForWorkers(t *testing.T) {
	t.Parallel()
	backends(t, func(t *testing.T, rdb redis.UniversalClient) {
		ctx := context.Background()
		s, _ := newTest(t, rdb, Config{MaxAdmitted: 2})
		for i := range 5 {
			add(t, s, fmt.Sprint("u", i), "A", fmt.Sprint("o", i))
		}
		got, next := admit(t, s)
		if len(got) != 2 || next != Never {
			t.Fatalf("admitted %v, next %v; want 2 and to wait for a worker", got, next)
		}
		st, _, _ := s.Update(ctx, got[0])
		if _, ok, _ := s.Start(ctx, "", got[0], st.Gen, "w"); !ok {
			t.Fatal("Start refused")
		}
		if woken, _ := s.Wait(ctx, 0, time.Second); !woken {
			t.Error("a start under a binding cap woke no admitter")
		}
		if got, _ := admit(t, s); len(got) != 1 {
			t.Fatalf("admitted %v after one start; want one more", got)
		}
	})
}

func TestLearnedRate(t *testing.T) {
	t.Parallel()
	backends(t, func(t *testing.T, rdb redis.UniversalClient) {
		ctx := context.Background()
		s, clk := newTest(t, rdb, Config{Account: ratelimit.Limit{Requests: 5, Window: time.Second}})
		rate := func() float64 {
			t.Helper()
			st, err := s.Account(ctx, "A")
			if err != nil {
				t.Fatal(err)
			}
			return st.LearnedRate
		}
		if r := rate(); r != 0 {
			t.Fatalf("learned rate %v before any answer", r)
		}
		_ = s.Learn(ctx, "A", Limited)
		if r := rate(); r != 2.5 {
			t.Fatalf("after a 429: %v/s; want half of 5/s", r)
		}
		// The other 429s of the same burst (answered before the halved
		// interval passed) halve nothing more.
		_ = s.Learn(ctx, "A", Limited)
		if r := rate(); r != 2.5 {
			t.Fatalf("after a second 429 of the same burst: %v/s; want still 2.5/s", r)
		}
		clk.add(time.Second)
		_ = s.Learn(ctx, "A", Limited)
		if r := rate(); r != 1.25 {
			t.Fatalf("after two 429s: %v/s; want 1.25/s", r)
		}
		// Back quickly to 85 % of where it hurt (2.5/s), then slowly.
		for range 20 {
			_ = s.Learn(ctx, "A", Accepted)
		}
		if r := rate(); r < 2.1 || r > 2.2 {
			t.Fatalf("after 20 successes: %v/s; want about 2.125/s", r)
		}
		for range 2000 {
			_ = s.Learn(ctx, "A", Accepted)
		}
		if r := rate(); r != 0 {
			t.Errorf("after 2,000 successes the learned rate %v/s is still below the ceiling", r)
		}
		_ = s.LearnLimit(ctx, "A", ratelimit.Limit{Requests: 1, Window: time.Second})
		if r := rate(); r != 1 {
			t.Errorf("after ratelimit-limit 1/s: %v/s", r)
		}
		_ = s.LearnLimit(ctx, "B", ratelimit.Limit{Requests: 100, Window: time.Second})
		if st, _ := s.Account(ctx, "B"); st.LearnedRate != 0 {
			t.Errorf("a stated limit above the ceiling lowered the rate to %v/s", st.LearnedRate)
		}
	})
}

func TestFinishedAccountsLeaveNoKeys(t *testing.T) {
	t.Parallel()
	backends(t, func(t *testing.T, rdb redis.UniversalClient) {
		ctx := context.Background()
		s, clk := newTest(t, rdb, Config{})
		add(t, s, "u1", "A", "o1")
		add(t, s, "u2", "A", "o1")
		for range 2 {
			got, _ := admit(t, s)
			finish(t, s, got...)
		}
		clk.add(time.Second)
		keys, err := rdb.Keys(ctx, "orgsync:{adm}:*").Result()
		if err != nil {
			t.Fatal(err)
		}
		for _, k := range keys {
			switch k {
			case "orgsync:{adm}:acct:A":
				// Kept until its next slot has passed, then expires.
				if ttl, _ := rdb.PTTL(ctx, k).Result(); ttl <= 0 || ttl > 2*time.Second {
					t.Errorf("%s expires in %v; want within 2s", k, ttl)
				}
			case "orgsync:{adm}:seq", "orgsync:{adm}:plan", "orgsync:{adm}:notify":
			default:
				t.Errorf("key %s left behind after every update finished", k)
			}
		}
	})
}

func TestHoldsUpdateStateAndLine(t *testing.T) {
	t.Parallel()
	backends(t, func(t *testing.T, rdb redis.UniversalClient) {
		ctx := context.Background()
		s, _ := newTest(t, rdb, Config{})
		add(t, s, "u1", "A", "o1")
		add(t, s, "u2", "A", "o1")
		if _, err := s.Add(ctx, Item{ID: "r1", Account: "A", Org: "A/o1", Queue: "q", Origin: 1}); err != nil {
			t.Fatal(err)
		}
		_ = s.Park(ctx, "A", "provider said 401", 401)
		_ = s.Park(ctx, "A", "a second reason is not kept", 503)
		_ = s.Hold(ctx, "B", t0.Add(time.Minute), "429 from Truto", 429)
		_ = s.Park(ctx, "", "the API token was rejected", 401)
		holds, err := s.Holds(ctx)
		if err != nil {
			t.Fatal(err)
		}
		want := []Hold{
			{Kind: "parked", Account: "", Reason: "the API token was rejected", StatusCode: 401, Since: t0.UTC()},
			{Kind: "parked", Account: "A", Reason: "provider said 401", StatusCode: 401, Since: t0.UTC()},
			{Kind: "rate_limited", Account: "B", Reason: "429 from Truto", StatusCode: 429, Since: t0.UTC(), Until: t0.Add(time.Minute).UTC()},
		}
		if diff := cmp.Diff(want, holds); diff != "" {
			t.Errorf("holds (-want +got):\n%s", diff)
		}
		st, ok, err := s.Update(ctx, "u2")
		if err != nil || !ok {
			t.Fatalf("Update(u2) = %v, %v", ok, err)
		}
		base := t0.UnixMilli()
		wantSt := UpdateState{State: "waiting", Gen: base + 1, Account: "A", Seq: base + 1, Origin: base + 1, Ahead: 1, Queue: "q", Payload: []byte("p-u2")}
		if diff := cmp.Diff(wantSt, st); diff != "" {
			t.Errorf("u2 (-want +got):\n%s", diff)
		}
		if _, ok, _ := s.Update(ctx, "nope"); ok {
			t.Error("an unknown id has an admission state")
		}
		line, _ := s.Line(ctx, "A", "A/o1")
		if diff := cmp.Diff([]Place{{"u1", base, base}, {"u2", base + 1, base + 1}, {"r1", base + 2, 1}}, line); diff != "" {
			t.Errorf("line (-want +got):\n%s", diff)
		}
	})
}

// TestRateLimitedTellsTheTokenFromTheAccount: a 429 whose stated limit is
// faster than any account may go is the token's: every lane waits and the
// token's rate is learned; otherwise only the account's lane waits.
func TestRateLimitedTellsTheTokenFromTheAccount(t *testing.T) {
	t.Parallel()
	backends(t, func(t *testing.T, rdb redis.UniversalClient) {
		ctx := context.Background()
		s, clk := newTest(t, rdb, Config{Account: ratelimit.Limit{Requests: 10, Window: time.Second}})
		add(t, s, "a1", "A", "o1")
		add(t, s, "b1", "B", "o1")
		scope, err := s.RateLimited(ctx, "A", t0.Add(2*time.Second), ratelimit.Limit{Requests: 5, Window: time.Second}, "429", 429)
		if err != nil || scope != ScopeAccount {
			t.Fatalf("RateLimited(5/s) = %v, %v; want the account's", scope, err)
		}
		if got, _ := admit(t, s); !cmp.Equal(got, []string{"b1"}) {
			t.Fatalf("admitted %v; want only B while A waits", got)
		}
		if st, _ := s.Account(ctx, "A"); st.LearnedRate != 5 {
			t.Errorf("A's learned rate %v/s, want the stated 5/s", st.LearnedRate)
		}
		add(t, s, "b2", "B", "o2")
		scope, _ = s.RateLimited(ctx, "B", t0.Add(3*time.Second), ratelimit.Limit{Requests: 150, Window: time.Second}, "429", 429)
		if scope != ScopeToken {
			t.Fatalf("RateLimited(150/s) = %v; want the token's", scope)
		}
		clk.set(t0.Add(2 * time.Second))
		if got, next := admit(t, s); len(got) != 0 || !next.Equal(t0.Add(3*time.Second)) {
			t.Fatalf("admitted %v, next %v; want nothing until the token's window reopens at +3s", got, next.Sub(t0))
		}
		clk.set(t0.Add(3 * time.Second))
		if got, _ := admit(t, s); len(got) == 0 {
			t.Fatal("nothing admitted after the token's window reopened")
		}
	})
}

// TestFailingAccountHoldsItsLane: after AccountFailures transient failures
// in a row the account's lane waits, doubling; a success resets the count.
func TestFailingAccountHoldsItsLane(t *testing.T) {
	t.Parallel()
	backends(t, func(t *testing.T, rdb redis.UniversalClient) {
		ctx := context.Background()
		s, clk := newTest(t, rdb, Config{AccountFailures: 3})
		add(t, s, "a1", "A", "o1")
		add(t, s, "b1", "B", "o1")
		var holds []time.Duration
		for range 4 {
			d, err := s.Failed(ctx, "A")
			if err != nil {
				t.Fatal(err)
			}
			holds = append(holds, d)
		}
		if diff := cmp.Diff([]time.Duration{0, 0, time.Second, 2 * time.Second}, holds); diff != "" {
			t.Errorf("holds after each failure (-want +got):\n%s", diff)
		}
		if got, _ := admit(t, s); !cmp.Equal(got, []string{"b1"}) {
			t.Fatalf("admitted %v; want only B while A's lane waits", got)
		}
		clk.add(2 * time.Second)
		if got, _ := admit(t, s); !cmp.Equal(got, []string{"a1"}) {
			t.Fatalf("admitted %v after the hold; want a1", got)
		}
		_ = s.Learn(ctx, "A", Accepted)
		if d, _ := s.Failed(ctx, "A"); d != 0 {
			t.Errorf("a failure after a success held the lane for %v; the count should have restarted", d)
		}
	})
}

// TestStartAfterAHoldPutsTheUpdateBack: an update admitted before its
// account was held (a 429 of an earlier one) is not started: it goes back to
// its lane, unsent, and waits out the hold.
func TestStartAfterAHoldPutsTheUpdateBack(t *testing.T) {
	t.Parallel()
	backends(t, func(t *testing.T, rdb redis.UniversalClient) {
		ctx := context.Background()
		s, clk := newTest(t, rdb, Config{})
		add(t, s, "a1", "A", "o1")
		add(t, s, "a2", "A", "o2")
		tickets, _, _ := s.Admit(ctx, "p")
		if len(tickets) != 2 {
			t.Fatalf("admitted %d; want both", len(tickets))
		}
		if err := s.Hold(ctx, "A", t0.Add(5*time.Second), "429", 429); err != nil {
			t.Fatal(err)
		}
		st, ok, err := s.Start(ctx, "", "a2", tickets[1].Gen, "w")
		if err != nil || ok || !st.Held {
			t.Fatalf("Start after the hold = %+v, %v, %v; want it put back", st, ok, err)
		}
		if got, next := admit(t, s); len(got) != 0 || !next.Equal(t0.Add(5*time.Second)) {
			t.Fatalf("admitted %v, next %v; want nothing until the hold ends", got, next.Sub(t0))
		}
		clk.set(t0.Add(5 * time.Second))
		if got, _ := admit(t, s); !cmp.Equal(got, []string{"a2"}) {
			t.Errorf("after the hold admitted %v; want a2", got)
		}
	})
}

// TestClearFailuresReleasesTheLanes: when the circuit closes, lanes held for
// failures (which were the upstream's) go at once.
func TestClearFailuresReleasesTheLanes(t *testing.T) {
	t.Parallel()
	backends(t, func(t *testing.T, rdb redis.UniversalClient) {
		ctx := context.Background()
		s, _ := newTest(t, rdb, Config{AccountFailures: 1})
		add(t, s, "a1", "A", "o1")
		if d, _ := s.Failed(ctx, "A"); d == 0 {
			t.Fatal("no hold after a failure with AccountFailures 1")
		}
		if got, _ := admit(t, s); len(got) != 0 {
			t.Fatalf("admitted %v from a lane held for failures", got)
		}
		if n, err := s.ClearFailures(ctx); err != nil || n != 1 {
			t.Fatalf("ClearFailures = %d, %v; want 1", n, err)
		}
		if got, _ := admit(t, s); !cmp.Equal(got, []string{"a1"}) {
			t.Errorf("admitted %v after the release; want a1", got)
		}
	})
}

// TestProbeGoesFromALaneHeldForFailures: while the circuit is open every
// lane may be held for the failures the outage caused; the probe still finds
// an update, and its success lifts its account's hold.
func TestProbeGoesFromALaneHeldForFailures(t *testing.T) {
	t.Parallel()
	backends(t, func(t *testing.T, rdb redis.UniversalClient) {
		ctx := context.Background()
		s, _ := newTest(t, rdb, Config{AccountFailures: 1})
		add(t, s, "a1", "A", "o1")
		add(t, s, "a2", "A", "o2")
		if d, err := s.Failed(ctx, "A"); err != nil || d <= 0 {
			t.Fatalf("Failed = %v, %v; want A's lane held", d, err)
		}
		if got, _ := admit(t, s); len(got) != 0 {
			t.Fatalf("a normal pass admitted %v from a lane held for failures", got)
		}
		tickets, _, err := s.admit(ctx, 0, "proc-1", 1, true)
		if err != nil || len(tickets) != 1 || tickets[0].ID != "a1" {
			t.Fatalf("the probe pass admitted %+v, %v; want a1 from the held lane", tickets, err)
		}
		if got, _ := admit(t, s); len(got) != 0 {
			t.Fatalf("after the probe a normal pass admitted %v; the lane is still held", got)
		}
		if err := s.Learn(ctx, "A", Accepted); err != nil {
			t.Fatal(err)
		}
		if got, _ := admit(t, s); !cmp.Equal(got, []string{"a2"}) {
			t.Fatalf("after the probe's success admitted %v; want a2: a success lifts the failure hold", got)
		}
	})
}
