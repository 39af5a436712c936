package circuit

import (
	"context"
	"strconv"
	"testing"
	"time"

	"github.com/orgsync/orgsync/internal/redistest"
)

func TestOpensProbesAndCloses(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	ctx := context.Background()
	b := New(srv.Client(), Config{MinFailures: 5, Threshold: 0.5, ProbeInterval: 300 * time.Millisecond, Ramp: -1})

	// Successes and a few failures: stays closed.
	for i := 0; i < 10; i++ {
		if _, _, err := b.Record(ctx, "acct-"+strconv.Itoa(i%3), i%3 == 0, false); err != nil {
			t.Fatal(err)
		}
	}
	if st, _ := b.State(ctx); st.Open {
		t.Fatalf("opened at 4 failures of 10 (threshold 50%%, min 5): %+v", st)
	}
	// A burst of failures: opens.
	opened := false
	for i := 0; i < 10 && !opened; i++ {
		o, _, err := b.Record(ctx, "acct-"+strconv.Itoa(i%3), true, false)
		if err != nil {
			t.Fatal(err)
		}
		opened = o
	}
	if !opened {
		t.Fatal("did not open after a run of failures")
	}
	// Open: exactly one probe per interval; everyone else waits.
	probes, waits := 0, 0
	var probe Decision
	for i := 0; i < 50; i++ {
		d, err := b.Allow(ctx)
		if err != nil {
			t.Fatal(err)
		}
		switch {
		case d.Probe:
			probes++
			probe = d
		case !d.Allow:
			waits++
			if d.Wait <= 0 || d.Reason == "" {
				t.Errorf("wait decision without a wait or reason: %+v", d)
			}
		default:
			t.Errorf("open breaker allowed a non-probe: %+v", d)
		}
	}
	// The first probe slot opens 1 s after opening; poll until it is handed out.
	deadline := time.Now().Add(3 * time.Second)
	for probes == 0 && time.Now().Before(deadline) {
		d, _ := b.Allow(ctx)
		if d.Probe {
			probes, probe = 1, d
		}
		time.Sleep(20 * time.Millisecond) // polling a condition
	}
	if probes != 1 || !probe.Allow {
		t.Fatalf("probes = %d, want exactly 1 (waits %d)", probes, waits)
	}
	// A failed probe keeps it open; a successful one closes it.
	if _, closed, _ := b.Record(ctx, "acct-1", true, true); closed {
		t.Fatal("a failed probe closed the breaker")
	}
	if _, closed, _ := b.Record(ctx, "acct-1", false, true); !closed {
		t.Fatal("a successful probe did not close the breaker")
	}
	if d, _ := b.Allow(ctx); !d.Allow || d.Probe {
		t.Errorf("after closing: %+v, want allowed", d)
	}
	if st, _ := b.State(ctx); st.Open || st.ClosedAt.IsZero() {
		t.Errorf("state after close = %+v", st)
	}
}

func TestRampAdmitsAGrowingFraction(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	ctx := context.Background()
	b := New(srv.Client(), Config{MinFailures: 1, MinAccounts: 1, Threshold: 0.1, Ramp: time.Minute})
	if o, _, _ := b.Record(ctx, "acct-1", true, false); !o {
		t.Fatal("did not open")
	}
	if _, c, _ := b.Record(ctx, "acct-1", false, true); !c {
		t.Fatal("did not close")
	}
	allowed := 0
	for i := 0; i < 400; i++ {
		d, err := b.Allow(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if d.Allow {
			allowed++
		}
	}
	// Right after closing about 10 % go through.
	if allowed < 10 || allowed > 100 {
		t.Errorf("%d of 400 admitted just after closing, want about 40", allowed)
	}
}

func TestDisabled(t *testing.T) {
	t.Parallel()
	b := New(nil, Config{Disabled: true})
	if d, err := b.Allow(context.Background()); !d.Allow || err != nil {
		t.Errorf("disabled breaker: %+v %v", d, err)
	}
}

// TestOneFailingAccountDoesNotOpen: failures all from one account never open
// the circuit (that account's lane backs off in admission instead); the same
// failures from two accounts do.
func TestOneFailingAccountDoesNotOpen(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	ctx := context.Background()
	b := New(srv.Client(), Config{MinFailures: 5, Threshold: 0.5, Ramp: -1})
	for range 50 {
		if o, _, err := b.Record(ctx, "sick", true, false); err != nil || o {
			t.Fatalf("Record = opened %v, %v; one account's failures must not open the circuit", o, err)
		}
	}
	if o, _, _ := b.Record(ctx, "also-sick", true, false); !o {
		t.Error("failures from a second account did not open the circuit")
	}
}

// TestSuccessesAreCountedThenRecordedTogether: a success that is not the
// probe reaches Redis only with the next failure, probe or flush, and counts
// there all the same: 30 successes keep 20 failures (40 %) from opening the
// breaker; a flush while open discards them without closing it.
func TestSuccessesAreCountedThenRecordedTogether(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	rdb := srv.Client()
	ctx := context.Background()
	b := New(rdb, Config{MinFailures: 5, Threshold: 0.5, Ramp: -1})
	buckets := b.key + ":buckets"
	sum := func(prefix string) int {
		t.Helper()
		all, err := rdb.HGetAll(ctx, buckets).Result()
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for k, v := range all {
			if k[:1] == prefix {
				c, _ := strconv.Atoi(v)
				n += c
			}
		}
		return n
	}
	for range 30 {
		if _, _, err := b.Record(ctx, "a", false, false); err != nil {
			t.Fatal(err)
		}
	}
	if n := sum("n"); n != 0 {
		t.Fatalf("%d requests in Redis before any flush; want the successes counted in the process", n)
	}
	if err := b.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if n := sum("n"); n != 30 {
		t.Fatalf("%d requests in Redis after a flush; want 30", n)
	}
	for range 5 {
		_, _, _ = b.Record(ctx, "a", false, false)
	}
	for i := range 20 {
		opened, _, err := b.Record(ctx, "acct-"+strconv.Itoa(i%2), true, false)
		if err != nil {
			t.Fatal(err)
		}
		if opened {
			t.Fatalf("opened at failure %d of 55 requests: the counted successes did not go with the failures", i+1)
		}
	}
	if n, f := sum("n"), sum("f"); n != 55 || f != 20 {
		t.Fatalf("buckets hold %d requests and %d failures; want 55 and 20", n, f)
	}
	// Open it, then flush successes counted meanwhile: still open.
	for i := range 60 {
		if opened, _, _ := b.Record(ctx, "acct-"+strconv.Itoa(i%2), true, false); opened {
			break
		}
	}
	if st, _ := b.State(ctx); !st.Open {
		t.Fatal("did not open after 60 more failures")
	}
	_, _, _ = b.Record(ctx, "a", false, false)
	if err := b.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if st, _ := b.State(ctx); !st.Open {
		t.Fatal("a flush of successes closed the breaker; only the probe's success may")
	}
}
