package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/orgsync/orgsync/internal/bench"
	"github.com/orgsync/orgsync/internal/redistest"
	"github.com/orgsync/orgsync/internal/testrig"
	"github.com/orgsync/orgsync/tasks"
	"github.com/orgsync/orgsync/trutoclient"
)

// worker applies updates as orgsync's worker does, with a tasks.Handler
// sending to a fake Truto that answers 422 for organizations whose id starts
// with "bad" and 200 (echoing the id) for the others.
func (f *fixture) worker(t *testing.T) *tasks.Handler {
	t.Helper()
	return f.workerRejecting(t, func(org string, _ []byte) bool { return strings.HasPrefix(org, "bad") })
}

// workerRejecting is worker with its own rule for which updates get a 422.
func (f *fixture) workerRejecting(t *testing.T, reject func(org string, body []byte) bool) *tasks.Handler {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		org := r.URL.Path[strings.LastIndex(r.URL.Path, "/")+1:]
		body, _ := io.ReadAll(r.Body)
		w.Header().Set("Content-Type", "application/json")
		if reject(org, body) {
			w.WriteHeader(http.StatusUnprocessableEntity)
			_, _ = fmt.Fprintf(w, `{"error":"%s is not valid"}`, org)
			return
		}
		_, _ = fmt.Fprintf(w, `{"id":%q}`, org)
	}))
	t.Cleanup(srv.Close)
	client, err := trutoclient.New("test-token", trutoclient.WithBaseURL(srv.URL), trutoclient.WithTimeout(5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	return tasks.NewHandler(client, f.store, tasks.Policy{})
}

// work admits every update that can go and runs it through h, as a
// worker's admitter and asynq would, until admission admits nothing more. It
// returns how many it ran. It may run on another goroutine than the test's.
func (f *fixture) work(h *tasks.Handler) (int, error) {
	ctx := context.Background()
	ran := 0
	for {
		tickets, _, err := f.store.Scheduler().Admit(ctx, "test-admitter")
		if err != nil {
			return ran, err
		}
		if len(tickets) == 0 {
			return ran, nil
		}
		for _, tk := range tickets {
			// A 422 ends in a dead letter, which ProcessTask reports as an error.
			_ = h.ProcessTask(ctx, tasks.TicketTask(tk))
			ran++
		}
	}
}

// mustWork is work on the test's goroutine.
func (f *fixture) mustWork(t *testing.T, h *tasks.Handler) int {
	t.Helper()
	n, err := f.work(h)
	if err != nil {
		t.Fatalf("work: %v", err)
	}
	return n
}

// runStatusOf runs `runs status` with args and decodes its one object.
func runStatusOf(t *testing.T, f *fixture, wantCode int, args ...string) (runStatusJSON, result) {
	t.Helper()
	r := cli(t, f.srv, "", append([]string{"runs", "status"}, args...)...)
	if r.code != wantCode {
		t.Fatalf("runs status %v: exit %d, want %d; stderr %q", args, r.code, wantCode, r.stderr)
	}
	var st runStatusJSON
	decode(t, r, &st)
	return st, r
}

// counts is the part of a run's status the tests compare.
type counts struct {
	Total, Completed, Dead, Purged, Waiting int64
	Sealed, Done                            bool
}

func countsOf(r runRow) counts {
	return counts{r.Total, r.Completed, r.Dead, r.Purged, r.Waiting, r.Sealed, r.Done}
}

// cliQuiet runs the CLI where stdout may rightly be empty (an NDJSON list
// with nothing in it); lines it prints must still be JSON objects.
func cliQuiet(t *testing.T, f *fixture, args ...string) result {
	t.Helper()
	var out, errb strings.Builder
	code := run(context.Background(), append([]string{"--redis-url", f.srv.URL()}, args...), strings.NewReader(""), &out, &errb, nil)
	r := result{code, out.String(), errb.String()}
	if r.stdout != "" {
		checkJSONLines(t, r)
	}
	return r
}

// nightly is a file of six lines: three updates that apply, one Truto
// refuses (line 3), a blank line and an invalid one.
var nightly = strings.Join([]string{
	validLine("o1"),    // 1
	"",                 // 2: blank
	validLine("bad-3"), // 3: 422
	validLine("o4"),    // 4
	`{"id":"o5",oops}`, // 5: invalid
	validLine("o6"),    // 6
}, "\n") + "\n"

// TestRunLifecycle follows a run made by `bulk --run` through the worker:
// its status before and after, the exit codes of --wait, the run list, its
// results line by line with filters, a re-run of the same file, and its
// outcome events.
func TestRunLifecycle(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	path := writeFile(t, nightly)
	r := cli(t, f.srv, "", "bulk", path, "--run", "nightly")
	if r.code != 1 {
		t.Fatalf("bulk: exit %d, want 1 (one invalid line); stderr %q", r.code, r.stderr)
	}
	var sum bulkSummary
	decode(t, r, &sum)
	if diff := cmp.Diff(bulkSummary{Run: "nightly", Read: 5, Enqueued: 4, Invalid: 1}, sum, ignoreTiming); diff != "" {
		t.Errorf("summary (-want +got):\n%s", diff)
	}

	st, _ := runStatusOf(t, f, 0, "nightly")
	if diff := cmp.Diff(counts{Total: 4, Waiting: 4, Sealed: true}, countsOf(st.runRow)); diff != "" {
		t.Errorf("before any work (-want +got):\n%s", diff)
	}
	if st.Finished != nil || st.Started.IsZero() || len(st.DeadByStatus) != 0 || st.DeadByClass == nil {
		t.Errorf("before any work: %+v; want started, not finished, no dead letters", st)
	}
	st, r = runStatusOf(t, f, 2, "nightly", "--wait", "--timeout", "300ms", "--poll", "50ms")
	if st.Waiting != 4 || st.Done || !strings.Contains(r.stderr, "not done after --timeout 300ms: 4 of 4 still waiting") {
		t.Errorf("--timeout: %+v, stderr %q; want the run as it stood and why it exits 2", st, r.stderr)
	}

	h := f.worker(t)
	if n := f.mustWork(t, h); n != 4 {
		t.Fatalf("the worker ran %d updates, want 4", n)
	}
	st, r = runStatusOf(t, f, 1, "nightly", "--wait", "--poll", "10ms")
	if diff := cmp.Diff(counts{Total: 4, Completed: 3, Dead: 1, Sealed: true, Done: true}, countsOf(st.runRow)); diff != "" {
		t.Errorf("after the work (-want +got):\n%s", diff)
	}
	if st.Finished == nil || !cmp.Equal(st.DeadByStatus, map[string]int{"422": 1}) || !cmp.Equal(st.DeadByClass, map[string]int{"permanent": 1}) {
		t.Errorf("done: finished %v, dead by status %v, by class %v; want finished, one 422 permanent", st.Finished, st.DeadByStatus, st.DeadByClass)
	}
	if !strings.Contains(r.stderr, "run nightly done: 3 completed, 1 dead, 0 purged of 4; `enqueue runs results nightly --state dead`") {
		t.Errorf("stderr %q; want why it exits 1 and what to run next", r.stderr)
	}

	// The list: one row per run, NDJSON off a terminal.
	rows := decodeLines[runRow](t, cli(t, f.srv, "", "runs", "list"))
	if len(rows) != 1 || rows[0].Run != "nightly" || countsOf(rows[0]) != countsOf(st.runRow) || rows[0].Finished == nil {
		t.Errorf("runs list: %+v; want nightly as runs status has it", rows)
	}

	// Results, in line order, with their filters.
	res := decodeLines[tasks.RunResult](t, cli(t, f.srv, "", "runs", "results", "nightly"))
	var lines []int64
	for _, x := range res {
		lines = append(lines, x.Line)
	}
	if !slices.Equal(lines, []int64{1, 3, 4, 6}) {
		t.Fatalf("result lines %v, want 1 3 4 6 (the blank and the invalid line are not in the run)", lines)
	}
	wantKey := tasks.RunKey("nightly", 1, []byte(validLine("o1")))
	if x := res[0]; x.State != tasks.StatusCompleted || x.StatusCode != 200 || string(x.Response) != `{"id":"o1"}` ||
		x.IdempotencyKey != wantKey || x.TaskID != tasks.TaskID("acc1", wantKey) {
		t.Errorf("line 1: %+v; want completed, 200, its response and ids", x)
	}
	if x := res[1]; x.State != tasks.StatusDead || x.StatusCode != 422 || x.Error == nil || x.Error.Class != "permanent" ||
		string(x.Error.Body) != `{"error":"bad-3 is not valid"}` {
		t.Errorf("line 3: %+v (error %+v); want dead, 422, permanent, Truto's body", x, x.Error)
	}
	for _, tt := range []struct {
		args  []string
		lines []int64
	}{
		{[]string{"--state", "dead"}, []int64{3}},
		{[]string{"--state", "completed"}, []int64{1, 4, 6}},
		{[]string{"--status", "422"}, []int64{3}},
		{[]string{"--state", "completed", "--status", "422"}, nil},
		{[]string{"--state", "pending"}, nil},
	} {
		r := cliQuiet(t, f, append([]string{"runs", "results", "nightly"}, tt.args...)...)
		var got []int64
		if r.stdout != "" {
			for _, x := range decodeLines[tasks.RunResult](t, r) {
				got = append(got, x.Line)
			}
		}
		if r.code != 0 || !slices.Equal(got, tt.lines) {
			t.Errorf("runs results %v: exit %d, lines %v; want 0 and %v (stderr %q)", tt.args, r.code, got, tt.lines, r.stderr)
		}
	}

	// The same file again: nothing enqueued, nothing added to the run.
	r = cli(t, f.srv, "", "bulk", path, "--run", "nightly")
	decode(t, r, &sum)
	if r.code != 1 || sum.Duplicates != 4 || sum.Enqueued != 0 {
		t.Errorf("re-run: exit %d, %+v; want 4 duplicates", r.code, sum)
	}
	again, _ := runStatusOf(t, f, 0, "nightly")
	if countsOf(again.runRow) != countsOf(st.runRow) {
		t.Errorf("after the re-run: %+v; want the same counts as before %+v", countsOf(again.runRow), countsOf(st.runRow))
	}
}

// TestRunsUsage: bad arguments exit 2 before any connection; an unknown run
// exits 1 with what to do.
func TestRunsUsage(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	tests := []struct {
		name string
		args []string
		code int
		want string
	}{
		{"bad state", []string{"runs", "results", "r", "--state", "done"}, 2, `--state "done": expected one of completed, dead, purged, not_queued, waiting, pending, active`},
		{"negative status", []string{"runs", "results", "r", "--status", "-1"}, 2, "--status -1"},
		{"timeout without wait", []string{"runs", "status", "r", "--timeout", "1s"}, 2, "--timeout only applies with --wait"},
		{"zero poll", []string{"runs", "status", "r", "--wait", "--poll", "0s"}, 2, "--poll 0s must be positive"},
		{"negative timeout", []string{"runs", "status", "r", "--wait", "--timeout", "-1s"}, 2, "--timeout -1s must not be negative"},
		{"status needs a name", []string{"runs", "status"}, 2, "accepts 1 arg"},
		{"runs alone", []string{"runs"}, 2, "needs a command: one of list, results, status"},
		{"bulk wait without run", []string{"bulk", "--wait"}, 2, "--wait waits for a run: give it a name with --run NAME"},
		{"bulk timeout without wait", []string{"bulk", "--run", "r", "--timeout", "1m"}, 2, "--timeout only applies with --wait"},
		{"bulk bad run name", []string{"bulk", "--run", "a\tb"}, 2, "--run \"a\\tb\": run: has a control character"},
		{"unknown run status", []string{"runs", "status", "nope"}, 1, "run \"nope\" not found: `enqueue runs list` shows the runs kept (they expire with --result-ttl"},
		{"unknown run wait", []string{"runs", "status", "nope", "--wait"}, 1, "run \"nope\" not found"},
		{"unknown run results", []string{"runs", "results", "nope"}, 1, "run \"nope\" not found"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			srv := f.srv
			if tt.code == 2 {
				srv = nil // usage errors come before any connection
			}
			var r result
			if tt.code == 0 {
				r = cliQuiet(t, f, tt.args...)
			} else {
				r = cli(t, srv, "", tt.args...)
			}
			if r.code != tt.code || !strings.Contains(r.stderr, tt.want) {
				t.Errorf("exit %d, stderr %q; want %d and %q", r.code, r.stderr, tt.code, tt.want)
			}
		})
	}
}

// background runs the CLI on another goroutine with ctx; the result comes on
// the channel, and stdout can be read meanwhile.
func background(ctx context.Context, f *fixture, stdout *testrig.SyncBuffer, args ...string) <-chan result {
	done := make(chan result, 1)
	go func() {
		var errb strings.Builder
		code := run(ctx, append([]string{"--redis-url", f.srv.URL()}, args...), strings.NewReader(""), stdout, &errb, nil)
		done <- result{code, stdout.String(), errb.String()}
	}()
	return done
}

// workUntil runs the worker until the CLI running in the background ends,
// and returns its result.
func (f *fixture) workUntil(t *testing.T, h *tasks.Handler, done <-chan result) result {
	t.Helper()
	deadline := time.After(30 * time.Second)
	for {
		select {
		case r := <-done:
			checkJSONLines(t, r)
			return r
		case <-deadline:
			t.Fatal("the CLI did not end within 30s")
		default:
		}
		if n := f.mustWork(t, h); n == 0 {
			time.Sleep(5 * time.Millisecond) // polling a condition: new updates or the CLI's end
		}
	}
}

// TestBulkWait: `bulk --run --wait` prints the summary, waits while a worker
// applies the updates, then prints the run's status; the exit code is the
// worse of the bulk's and the run's.
func TestBulkWait(t *testing.T) {
	t.Parallel()
	var good strings.Builder
	for i := range 30 {
		good.WriteString(validLine(fmt.Sprint("org-", i)) + "\n")
	}
	tests := []struct {
		name    string
		content string
		code    int
		want    counts
	}{
		{"all completed", good.String(), 0, counts{Total: 30, Completed: 30, Sealed: true, Done: true}},
		{"one dead", good.String() + validLine("bad-31") + "\n", 1, counts{Total: 31, Completed: 30, Dead: 1, Sealed: true, Done: true}},
		{"invalid line, rest completed", good.String() + "{oops\n", 1, counts{Total: 30, Completed: 30, Sealed: true, Done: true}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			f := newFixture(t)
			h := f.worker(t)
			var stdout testrig.SyncBuffer
			done := background(context.Background(), f, &stdout, "bulk", writeFile(t, tt.content), "--run", "w", "--wait", "--poll", "10ms")
			r := f.workUntil(t, h, done)
			if r.code != tt.code {
				t.Fatalf("exit %d, want %d; stderr %q", r.code, tt.code, r.stderr)
			}
			lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
			if len(lines) != 2 {
				t.Fatalf("stdout %q; want the summary, then the run's status", r.stdout)
			}
			var sum bulkSummary
			var st runStatusJSON
			if err := json.Unmarshal([]byte(lines[0]), &sum); err != nil || sum.Run != "w" || sum.Read == 0 {
				t.Errorf("first line %q (%v); want the bulk summary", lines[0], err)
			}
			if err := json.Unmarshal([]byte(lines[1]), &st); err != nil || st.Run != "w" {
				t.Errorf("second line %q (%v); want the run's status", lines[1], err)
			}
			if diff := cmp.Diff(tt.want, countsOf(st.runRow)); diff != "" {
				t.Errorf("run status (-want +got):\n%s", diff)
			}
			if tt.code == 0 && r.stderr != "" {
				t.Errorf("stderr %q; want nothing (not a terminal: no progress bar)", r.stderr)
			}
		})
	}
	t.Run("timeout", func(t *testing.T) {
		t.Parallel()
		f := newFixture(t)
		r := cli(t, f.srv, "", "bulk", writeFile(t, good.String()), "--run", "w", "--wait", "--timeout", "200ms")
		if r.code != 2 || !strings.Contains(r.stderr, "not done after --timeout 200ms: 30 of 30 still waiting") {
			t.Errorf("exit %d, stderr %q; want 2 and why", r.code, r.stderr)
		}
		if n := strings.Count(r.stdout, "\n"); n != 2 {
			t.Errorf("stdout %q: want the summary and the status as it stood", r.stdout)
		}
	})
	t.Run("no line in the run", func(t *testing.T) {
		t.Parallel()
		f := newFixture(t)
		r := cli(t, f.srv, "", "bulk", writeFile(t, "\n{oops\n"), "--run", "w", "--wait")
		var sum bulkSummary
		decode(t, r, &sum)
		if r.code != 1 || sum.Invalid != 1 || !strings.Contains(r.stderr, "run w has no line") {
			t.Errorf("exit %d, %+v, stderr %q; want 1, the summary alone and why", r.code, sum, r.stderr)
		}
	})
}

// cancelAfter is a bulk input that gives its first line, then, once that
// line is enqueued, cancels the bulk (as SIGINT does) and ends.
type cancelAfter struct {
	first  string
	ready  func() bool
	cancel context.CancelFunc
	sent   bool
}

func (c *cancelAfter) Read(p []byte) (int, error) {
	if !c.sent {
		c.sent = true
		return copy(p, c.first), nil
	}
	deadline := time.Now().Add(10 * time.Second)
	for !c.ready() && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond) // polling a condition: the first line in its run
	}
	c.cancel()
	return 0, io.EOF
}

// TestInterruptedBulkLeavesTheRunOpen: a bulk stopped half-way does not seal
// its run, which is never done, however far its updates went, until the same
// file is run again with the same --run.
func TestInterruptedBulkLeavesTheRunOpen(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	content := validLine("o1") + "\n" + validLine("o2") + "\n"
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	in := &cancelAfter{first: validLine("o1") + "\n", cancel: cancel, ready: func() bool {
		// In the run, and in admission (which comes after).
		st, err := f.store.Runs().Get(context.Background(), "half")
		acct, aerr := f.store.Scheduler().Account(context.Background(), "acc1")
		return err == nil && st.Total == 1 && aerr == nil && acct.Waiting == 1
	}}
	var out, errb strings.Builder
	code := run(ctx, []string{"--redis-url", f.srv.URL(), "bulk", "--run", "half"}, in, &out, &errb, nil)
	if code != 2 || !strings.Contains(errb.String(), "re-run with the same --run half") || !strings.Contains(errb.String(), "stays open") {
		t.Fatalf("interrupted bulk: exit %d, stderr %q; want 2 and how to finish", code, errb.String())
	}

	f.mustWork(t, f.worker(t))
	st, r := runStatusOf(t, f, 2, "half", "--wait", "--timeout", "100ms", "--poll", "10ms")
	if diff := cmp.Diff(counts{Total: 1, Completed: 1}, countsOf(st.runRow)); diff != "" {
		t.Errorf("open run (-want +got):\n%s", diff)
	}
	if !strings.Contains(r.stderr, "the run is open") {
		t.Errorf("stderr %q; want it to say the run is open and how to finish it", r.stderr)
	}

	if r := cli(t, f.srv, "", "bulk", writeFile(t, content), "--run", "half"); r.code != 0 {
		t.Fatalf("re-run: exit %d, stderr %q", r.code, r.stderr)
	}
	f.mustWork(t, f.worker(t))
	st, _ = runStatusOf(t, f, 0, "half", "--wait", "--poll", "10ms")
	if diff := cmp.Diff(counts{Total: 2, Completed: 2, Sealed: true, Done: true}, countsOf(st.runRow)); diff != "" {
		t.Errorf("after the re-run (-want +got):\n%s", diff)
	}
}

// TestRunsListTable: on a terminal, runs list prints a table.
func TestRunsListTable(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	for _, name := range []string{"first", "second"} {
		if r := cli(t, f.srv, "", "bulk", writeFile(t, validLine("o-"+name)+"\n"), "--run", name); r.code != 0 {
			t.Fatalf("bulk: exit %d, stderr %q", r.code, r.stderr)
		}
	}
	f.mustWork(t, f.worker(t))
	if r := cli(t, f.srv, "", "bulk", writeFile(t, validLine("o-third")+"\n"), "--run", "third"); r.code != 0 {
		t.Fatalf("bulk: exit %d, stderr %q", r.code, r.stderr)
	}
	var out, errb strings.Builder
	a := newApp(strings.NewReader(""), &out, &errb, nil)
	a.stdoutTTY = true
	if code := a.execute(context.Background(), []string{"--redis-url", f.srv.URL(), "runs", "list"}); code != 0 {
		t.Fatalf("exit %d, stderr %q", code, errb.String())
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) != 4 || !strings.HasPrefix(lines[0], "RUN") || !strings.HasPrefix(lines[1], "first ") ||
		!strings.Contains(lines[1], "done") || !strings.HasPrefix(lines[3], "third ") || !strings.Contains(lines[3], "sealed") {
		t.Errorf("table =\n%s\nwant a header, then first, second (done) and third (sealed, waiting)", out.String())
	}
}

// TestRunResultsAcrossPages: a run longer than one page of the store comes
// out whole and in line order, as valid NDJSON.
func TestRunResultsAcrossPages(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	var b strings.Builder
	var want []int64
	for i := 1; i <= 1100; i++ {
		if i%100 == 0 {
			b.WriteString("\n") // blank: its line number is kept, with no update
			continue
		}
		b.WriteString(validLine(fmt.Sprint("org-", i)) + "\n")
		want = append(want, int64(i))
	}
	if r := cli(t, f.srv, "", "bulk", writeFile(t, b.String()), "--run", "big", "--concurrency", "8"); r.code != 0 {
		t.Fatalf("bulk: exit %d, stderr %q", r.code, r.stderr)
	}
	r := cli(t, f.srv, "", "runs", "results", "big")
	var got []int64
	for _, x := range decodeLines[tasks.RunResult](t, r) {
		if x.State != tasks.StatusWaiting {
			t.Fatalf("line %d: state %q, want waiting", x.Line, x.State)
		}
		got = append(got, x.Line)
	}
	if !slices.Equal(got, want) {
		t.Errorf("%d lines, want %d in line order", len(got), len(want))
	}
}

// TestExportEditBulkCountsOnce: a dead line exported, fixed, purged and
// enqueued again under the same run name (same key) counts once, at its first
// line: the run goes from dead to purged to completed, never to four lines.
func TestExportEditBulkCountsOnce(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	file := strings.Join([]string{
		`{"id":"o1","integrated_account_id":"acc1","body":{"name":"one"}}`,
		`{"id":"o2","integrated_account_id":"acc1","body":{"name":"broken"}}`,
		`{"id":"o3","integrated_account_id":"acc1","body":{"name":"three"}}`,
	}, "\n") + "\n"
	if r := cli(t, f.srv, "", "bulk", writeFile(t, file), "--run", "fix"); r.code != 0 {
		t.Fatalf("bulk: exit %d, stderr %q", r.code, r.stderr)
	}
	h := f.workerRejecting(t, func(_ string, body []byte) bool { return strings.Contains(string(body), "broken") })
	f.mustWork(t, h)
	st, _ := runStatusOf(t, f, 0, "fix")
	if diff := cmp.Diff(counts{Total: 3, Completed: 2, Dead: 1, Sealed: true, Done: true}, countsOf(st.runRow)); diff != "" {
		t.Fatalf("after the first pass (-want +got):\n%s", diff)
	}

	exported := cli(t, f.srv, "", "dlq", "export")
	if exported.code != 0 || strings.Count(exported.stdout, "\n") != 1 {
		t.Fatalf("dlq export: exit %d, %q", exported.code, exported.stdout)
	}
	if r := cli(t, f.srv, "", "dlq", "purge", "--all", "--yes"); r.code != 0 {
		t.Fatalf("dlq purge: exit %d, stderr %q", r.code, r.stderr)
	}
	st, _ = runStatusOf(t, f, 0, "fix")
	if diff := cmp.Diff(counts{Total: 3, Completed: 2, Purged: 1, Sealed: true, Done: true}, countsOf(st.runRow)); diff != "" {
		t.Errorf("after the purge (-want +got):\n%s", diff)
	}

	fixed := strings.ReplaceAll(exported.stdout, "broken", "fixed")
	if r := cli(t, f.srv, "", "bulk", writeFile(t, fixed), "--run", "fix"); r.code != 0 {
		t.Fatalf("bulk of the fixed line: exit %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
	}
	if n := f.mustWork(t, h); n != 1 {
		t.Errorf("the worker ran %d updates, want the fixed one", n)
	}
	st, _ = runStatusOf(t, f, 0, "fix")
	if diff := cmp.Diff(counts{Total: 3, Completed: 3, Sealed: true, Done: true}, countsOf(st.runRow)); diff != "" {
		t.Errorf("after the fixed line (-want +got):\n%s", diff)
	}
	res := decodeLines[tasks.RunResult](t, cli(t, f.srv, "", "runs", "results", "fix"))
	if len(res) != 3 || res[1].Line != 2 || res[1].State != tasks.StatusCompleted || !strings.Contains(string(res[1].Response), "o2") {
		t.Errorf("results %+v; want line 2 completed with its response, three lines in all", res)
	}
}

// TestWaitRidesOutRedisRestart: `runs status --wait` goes on waiting while
// Redis is down (a restart, a Sentinel failover), says so once on stderr
// when it goes and once when it is back, and ends when the run is done.
func TestWaitRidesOutRedisRestart(t *testing.T) {
	t.Parallel()
	f := newFixture(t, redistest.WithAOF())
	if r := cli(t, f.srv, "", "bulk", writeFile(t, validLine("o1")+"\n"+validLine("o2")+"\n"), "--run", "blip"); r.code != 0 {
		t.Fatalf("bulk: exit %d, stderr %q", r.code, r.stderr)
	}
	// The CLI is in its wait loop once it has read the run's status twice
	// (HGETALL of the run's record, every --poll); killing Redis before
	// that would test its start-up, not the wait.
	reads := func() int64 {
		calls, _ := bench.Calls(context.Background(), f.rdb)
		return calls["hgetall"]
	}
	before := reads()
	var stdout, stderr testrig.SyncBuffer
	done := make(chan int, 1)
	go func() {
		done <- run(context.Background(), []string{"--redis-url", f.srv.URL(), "runs", "status", "blip", "--wait", "--poll", "20ms", "--timeout", "1m"},
			strings.NewReader(""), &stdout, &stderr, nil)
	}()
	testrig.WaitFor(t, "the CLI to wait on the run", 10*time.Second, func() (bool, string) {
		n := reads()
		return n >= before+2, fmt.Sprintf("%d reads of a run's record, %d before", n, before)
	})
	f.srv.Kill()
	testrig.WaitFor(t, "the CLI to say Redis is unreachable", 10*time.Second, func() (bool, string) {
		return strings.Contains(stderr.String(), "run blip: Redis unreachable ("), stderr.String()
	})
	f.srv.Restart()
	h := f.worker(t)
	r := f.workUntil(t, h, resultOf(done, &stdout, &stderr))
	if r.code != 0 || !strings.Contains(r.stderr, "run blip: Redis reachable again after ") || strings.Count(r.stderr, "Redis unreachable") != 1 {
		t.Errorf("runs status --wait through a Redis restart: exit %d, stderr %q; want exit 0, one line when Redis went, one when it came back", r.code, r.stderr)
	}
	var st runStatusJSON
	decode(t, r, &st)
	if !st.Done || st.Completed != 2 {
		t.Errorf("status %+v; want done, 2 completed", st)
	}
}

// resultOf turns a CLI run's exit code, once it comes, into its result.
func resultOf(code <-chan int, stdout, stderr *testrig.SyncBuffer) <-chan result {
	out := make(chan result, 1)
	go func() { c := <-code; out <- result{c, stdout.String(), stderr.String()} }()
	return out
}
