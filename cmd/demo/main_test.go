package main

import (
	"bytes"
	"context"
	"encoding/json"
	"testing"
	"time"
)

// TestDemoRunsClean runs a small demo with every fault on and checks its report.
func TestDemoRunsClean(t *testing.T) {
	t.Parallel()
	var stdout, stderr bytes.Buffer
	args := []string{"--updates", "400", "--per-org", "2", "--accounts", "4", "--bad-orgs", "5", "--account-limit", "60",
		"--token-limit", "150", "--outage", "1s", "--outage-after", "100ms", "--timeout", "2m"}
	if err := run(context.Background(), args, &stdout, &stderr, false); err != nil {
		t.Fatalf("run: %v\nstderr:\n%s", err, stderr.String())
	}
	if stderr.Len() != 0 {
		t.Errorf("piped run wrote to stderr: %q", stderr.String())
	}
	var rep Report
	if err := json.Unmarshal(stdout.Bytes(), &rep); err != nil {
		t.Fatalf("stdout is not the JSON report: %v\n%s", err, stdout.String())
	}
	if rep.Phase1.DeadLettered != 10 || rep.Phase2.Applied != 400 || rep.Lost != 0 || rep.Duplicates != 0 || rep.OutOfOrder != 0 {
		t.Errorf("report = %+v; want 10 dead (5 organizations x 2) then all 400 applied, nothing lost, doubled or reordered", rep)
	}
	// Every run is counted once, whatever its outcome: the outcomes the
	// report names are a part of them (the rest: stale tickets and re-runs
	// the ledger answered).
	p1 := rep.Phase1
	if named := p1.Applied + p1.Retried + p1.Waited + p1.DeadLettered; p1.HandlerRuns < named || p1.HandlerRuns < 400 {
		t.Errorf("first pass: %d handler runs, fewer than the %d runs its outcomes name or than the 400 updates settled", p1.HandlerRuns, named)
	}
	// An organization's second update waits for its first in admission, not
	// in a handler run: no run is put back for its turn.
	for why := range rep.WaitReasons {
		if why != "rate_limited" && why != "account_attention" {
			t.Errorf("runs put back for %q (%v): only an upstream answer (429, a parked account) should put a run back", why, rep.WaitReasons)
		}
	}
	if rep.Fake.ByStatus[503] == 0 {
		t.Errorf("no 503s seen: the outage did not fire")
	}
}

func TestDemoRefusesBadFlags(t *testing.T) {
	t.Parallel()
	for _, args := range [][]string{{"--updates", "0"}, {"--accounts", "-1"}, {"--bad-orgs", "9999"}, {"--per-org", "0"}, {"--nope"}} {
		var out, errb bytes.Buffer
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		if err := run(ctx, args, &out, &errb, false); err == nil {
			t.Errorf("run(%v) = nil, want an error", args)
		}
		cancel()
	}
}
