package main

import (
	"bytes"
	"context"
	"encoding/json"
	"strconv"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/google/go-cmp/cmp"
)

// TestDemoRunsClean runs a small demo with every fault on and checks its report.
// The fake's token limit (150 per 10 s, which the worker is not told) is what
// paces it, so its length is the updates': 200 updates exceed the limit in a
// window (the 429s) in about half the time 400 took.
func TestDemoRunsClean(t *testing.T) {
	t.Parallel()
	const updates = 200
	var stdout, stderr bytes.Buffer
	args := []string{"--updates", strconv.Itoa(updates), "--per-org", "2", "--accounts", "4", "--bad-orgs", "5", "--account-limit", "60",
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
	if rep.Phase1.DeadLettered != 10 || rep.Phase2.Applied != updates || rep.Lost != 0 || rep.Duplicates != 0 || rep.OutOfOrder != 0 {
		t.Errorf("report = %+v; want 10 dead (5 organizations x 2) then all %d applied, nothing lost, doubled or reordered", rep, updates)
	}
	// Every run is counted once, whatever its outcome: the outcomes the
	// report names are a part of them (the rest: stale tickets and re-runs
	// the ledger answered).
	p1 := rep.Phase1
	if named := p1.Applied + p1.Retried + p1.Waited + p1.DeadLettered; p1.HandlerRuns < named || p1.HandlerRuns < updates {
		t.Errorf("first pass: %d handler runs, fewer than the %d runs its outcomes name or than the %d updates settled", p1.HandlerRuns, named, updates)
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
	// The updates went in as one run: its 10 dead letters after the first
	// pass, all the lines completed at the end.
	wantFirst := RunSummary{Total: updates, Completed: updates - 10, Dead: 10, Sealed: true, Done: true,
		DeadByStatus: map[string]int{"422": 10}, DeadByClass: map[string]int{"permanent": 10}}
	if diff := cmp.Diff(wantFirst, rep.Run.AfterFirstPass); rep.Run.Name != "demo" || diff != "" {
		t.Errorf("run %q after the first pass (-want +got):\n%s", rep.Run.Name, diff)
	}
	wantFinal := RunSummary{Total: updates, Completed: updates, Sealed: true, Done: true, DeadByStatus: map[string]int{}, DeadByClass: map[string]int{}}
	if diff := cmp.Diff(wantFinal, rep.Run.Final); diff != "" {
		t.Errorf("run at the end (-want +got):\n%s", diff)
	}
	if len(rep.Run.FirstLines) != 5 {
		t.Fatalf("first lines: %+v; want 5", rep.Run.FirstLines)
	}
	for i, l := range rep.Run.FirstLines {
		// Line i+1 is the first update of organization i.
		if l.Line != int64(i+1) || l.State != "completed" || l.StatusCode != 200 || !strings.Contains(l.Excerpt, orgID(i)) ||
			utf8.RuneCountInString(l.Excerpt) > excerptRunes {
			t.Errorf("line %d: %+v; want completed, 200, an excerpt of at most %d characters naming %s", i+1, l, excerptRunes, orgID(i))
		}
	}
}

// TestDemoNarratesTheRun runs a tiny demo as on a terminal and reads the
// end of its narrative: the run's counts and its first lines.
func TestDemoNarratesTheRun(t *testing.T) {
	t.Parallel()
	var stdout, stderr bytes.Buffer
	args := []string{"--updates", "12", "--per-org", "2", "--accounts", "2", "--bad-orgs", "1", "--outage", "0", "--timeout", "1m"}
	if err := run(context.Background(), args, &stdout, &stderr, true); err != nil {
		t.Fatalf("run: %v\nstderr:\n%s", err, stderr.String())
	}
	out := stderr.String()
	for _, want := range []string{
		`as run "demo": one line per update, in enqueue order, then the run is sealed`,
		`run "demo": 12 lines: 10 completed, 2 dead, 0 purged, 0 waiting; done; dead letters by status 422: 2, by class permanent: 2`,
		`5. The run "demo"`,
		`now:                  12 lines: 12 completed, 0 dead, 0 purged, 0 waiting; done; no dead letters`,
		`its first 5 lines:`,
		`line 1   completed 200  {`,
		`line 5   completed 200  {`,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("the narrative lacks %q:\n%s", want, out)
		}
	}
	var rep Report
	if err := json.Unmarshal(stdout.Bytes(), &rep); err != nil || rep.Run.Final.Completed != 12 {
		t.Errorf("stdout: %v, run %+v; want the JSON report with the run's 12 lines completed", err, rep.Run)
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
