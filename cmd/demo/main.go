// Command demo runs the whole of orgsync in one process on embedded defaults:
// an in-process Redis (miniredis), the fake Truto on loopback with a scripted
// outage, rate limits and a few organizations that refuse their update, a few
// thousand updates enqueued through the real producer as one run (a line each)
// and processed by the real worker, a report, a replay of the dead letters once
// the fake is "fixed", and the run's status and first lines of results.
//
// It needs nothing installed but Go:
//
//	go run ./cmd/demo [--updates 3000] [--per-org 3] [--accounts 20] [--outage 3s] [--bad-orgs 12]
//
// The narrative and live progress go to stderr when it is a terminal; stdout
// gets one JSON report, so `go run ./cmd/demo | jq` works.
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
	"golang.org/x/term"

	"github.com/orgsync/orgsync/internal/circuit"
	"github.com/orgsync/orgsync/internal/ratelimit"
	"github.com/orgsync/orgsync/internal/worker"
	"github.com/orgsync/orgsync/tasks"
	"github.com/orgsync/orgsync/trutoclient/trutotest"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	tty := term.IsTerminal(int(os.Stderr.Fd()))
	if err := run(ctx, os.Args[1:], os.Stdout, os.Stderr, tty); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(0)
		}
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(2)
	}
}

type settings struct {
	updates, perOrg, accounts, badOrgs, concurrency int
	outage, outageAfter, timeout                    time.Duration
	accountLimit, tokenLimit                        int
}

// orgs is how many organizations the updates go to.
func (s settings) orgs() int { return max(s.updates/s.perOrg, 1) }

func parse(args []string, stderr io.Writer) (settings, error) {
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	fs.SetOutput(stderr)
	s := settings{}
	fs.IntVar(&s.updates, "updates", 3000, "updates to enqueue")
	fs.IntVar(&s.perOrg, "per-org", 3, "updates per organization (they must apply in enqueue order)")
	fs.IntVar(&s.accounts, "accounts", 20, "integrated accounts they are spread over")
	fs.IntVar(&s.badOrgs, "bad-orgs", 12, "organizations the fake answers 422 until it is fixed")
	fs.IntVar(&s.concurrency, "concurrency", 50, "worker concurrency")
	fs.DurationVar(&s.outage, "outage", 3*time.Second, "length of the upstream outage (503s); 0 for none")
	fs.DurationVar(&s.outageAfter, "outage-after", 1500*time.Millisecond, "when the outage starts, after processing begins")
	fs.IntVar(&s.accountLimit, "account-limit", 100, "per-account limit per 10 s, at the fake and in the worker (Truto's is 50); 0 for none")
	fs.IntVar(&s.tokenLimit, "token-limit", 1500, "the fake's per-token limit per 10 s, which the worker is not told (Truto's is 500); 0 for none")
	fs.DurationVar(&s.timeout, "timeout", 3*time.Minute, "give up if the run has not finished by then")
	if err := fs.Parse(args); err != nil {
		return s, err
	}
	switch {
	case s.updates < 1:
		return s, fmt.Errorf("--updates %d: expected at least 1", s.updates)
	case s.accounts < 1:
		return s, fmt.Errorf("--accounts %d: expected at least 1", s.accounts)
	case s.perOrg < 1 || s.perOrg > s.updates:
		return s, fmt.Errorf("--per-org %d: expected 1..--updates", s.perOrg)
	case s.badOrgs < 0 || s.badOrgs > s.updates/s.perOrg:
		return s, fmt.Errorf("--bad-orgs %d: expected 0..(--updates / --per-org)", s.badOrgs)
	case s.concurrency < 1:
		return s, fmt.Errorf("--concurrency %d: expected at least 1", s.concurrency)
	}
	return s, nil
}

// tally counts the handler's events: each tasks.Event is one run of the handler.
type tally struct {
	runs, completed, retried, waited, dead atomic.Int64
	mu                                     sync.Mutex
	deadWhy                                map[string]int
	waitWhy                                map[string]int
}

func (t *tally) observe(e tasks.Event) {
	t.runs.Add(1) // every run, whatever its outcome (a stale ticket, a ledger-answered re-run included)
	switch e.Outcome {
	case tasks.OutcomeCompleted:
		if e.Class != tasks.ClassSkipped { // skipped: a re-run the ledger answered; not a new application
			t.completed.Add(1)
		}
	case tasks.OutcomeRetry:
		t.retried.Add(1)
	case tasks.OutcomeWaiting:
		t.waited.Add(1)
		t.mu.Lock()
		t.waitWhy[string(e.Class)]++
		t.mu.Unlock()
	case tasks.OutcomeDead:
		t.dead.Add(1)
		t.mu.Lock()
		t.deadWhy[e.Reason]++
		t.mu.Unlock()
	}
}

// Report is the JSON the demo prints on stdout.
type Report struct {
	Updates     int             `json:"updates"`
	Phase1      PhaseReport     `json:"first_pass"`
	Phase2      PhaseReport     `json:"after_replay"`
	DeadReasons map[string]int  `json:"dead_letter_reasons"`
	WaitReasons map[string]int  `json:"wait_reasons"`
	Fake        trutotest.Stats `json:"fake_truto"`
	Lost        int             `json:"lost"`
	Duplicates  int             `json:"duplicate_effects"`
	OutOfOrder  int             `json:"out_of_order_effects"`
	Run         RunReport       `json:"run"`
	Seconds     float64         `json:"seconds"`
}

// RunReport follows the run the updates were enqueued in (tasks.InRun), one
// line per update in enqueue order: where it stood after the first pass and
// at the end, and what became of its first lines.
type RunReport struct {
	Name           string       `json:"name"`
	AfterFirstPass RunSummary   `json:"after_first_pass"`
	Final          RunSummary   `json:"final"`
	FirstLines     []LineReport `json:"first_lines"`
}

// RunSummary is a run's counts (tasks.RunStatus) with its dead letters by
// HTTP status and class.
type RunSummary struct {
	Total        int64          `json:"total"`
	Completed    int64          `json:"completed"`
	Dead         int64          `json:"dead"`
	Purged       int64          `json:"purged"`
	Waiting      int64          `json:"waiting"`
	Sealed       bool           `json:"sealed"`
	Done         bool           `json:"done"`
	DeadByStatus map[string]int `json:"dead_by_status"`
	DeadByClass  map[string]int `json:"dead_by_class"`
}

// LineReport is one line of the run (tasks.RunResult) with an excerpt of
// Truto's response, or of why the update died.
type LineReport struct {
	Line       int64  `json:"line"`
	State      string `json:"state"`
	StatusCode int    `json:"status_code,omitempty"`
	Excerpt    string `json:"excerpt,omitempty"`
}

// The run the demo enqueues into, and how much of it the report shows.
const (
	demoRun = "demo"
	// shownLines is how many of the run's first lines the report shows.
	shownLines = 5
	// excerptRunes bounds each line's excerpt of a response or error.
	excerptRunes = 110
)

// PhaseReport is the state at the end of one pass. The counts are of
// handler runs since the start (dead_lettered: in this pass); HandlerRuns is
// every run whatever its outcome, so HandlerRuns minus the updates settled is
// what waiting and retrying cost.
type PhaseReport struct {
	HandlerRuns  int64   `json:"handler_runs"`
	Applied      int64   `json:"applied"`
	Retried      int64   `json:"retried"`
	Waited       int64   `json:"waited"`
	DeadLettered int64   `json:"dead_lettered"`
	Seconds      float64 `json:"seconds"`
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer, tty bool) error {
	s, err := parse(args, stderr)
	if err != nil {
		return err
	}
	say := func(format string, a ...any) {
		if tty {
			fmt.Fprintf(stderr, format+"\n", a...)
		}
	}
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	start := time.Now()

	mr, err := miniredis.Run()
	if err != nil {
		return fmt.Errorf("start the embedded Redis: %w", err)
	}
	defer mr.Close()
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	defer rdb.Close()

	const token = "demo-token-not-a-secret"
	bad := map[string]int{}
	for i := 0; i < s.badOrgs; i++ {
		bad[orgID(i*(s.orgs()/max(s.badOrgs, 1)))] = 422
	}
	faults := trutotest.Faults{
		OrgStatus:    bad,
		AccountLimit: trutotest.Limit{Requests: s.accountLimit, Window: trutotest.Duration(10 * time.Second)},
		TokenLimit:   trutotest.Limit{Requests: s.tokenLimit, Window: trutotest.Duration(10 * time.Second)},
		Latency:      trutotest.Duration(5 * time.Millisecond), LatencyJitter: trutotest.Duration(10 * time.Millisecond),
	}
	fake := trutotest.NewServer(token, trutotest.WithFaults(faults))
	defer fake.Close()

	say("orgsync demo: everything below runs in this process.")
	say("  Redis:      embedded (miniredis) at %s", mr.Addr())
	say("  Truto:      the fake at %s; limits %d/10s per account and %d/10s per token, %d organizations answer 422,",
		fake.URL, s.accountLimit, s.tokenLimit, s.badOrgs)
	say("              and a %s outage of 503s starts %s into the run", s.outage, s.outageAfter)
	say("  Worker:     told the per-account limit (it spaces requests to stay under it), not the token limit (it")
	say("              learns that one from 429s); a circuit breaker; one update at a time per organization")

	store := tasks.NewStore(rdb)
	producer := tasks.NewProducer(store)
	defer producer.Close()

	say("\n1. Enqueueing %d updates (%d per organization, numbered) over %d accounts through the real producer (tasks.Producer),",
		s.updates, s.perOrg, s.accounts)
	say("   as run %q: one line per update, in enqueue order, then the run is sealed...", demoRun)
	keys, err := enqueueAll(ctx, producer, s)
	if err != nil {
		return err
	}
	if err := store.Runs().Seal(ctx, demoRun); err != nil {
		return fmt.Errorf("seal run %q: %w", demoRun, err)
	}
	say("   enqueued %d in %.1fs", len(keys), time.Since(start).Seconds())

	t := &tally{deadWhy: map[string]int{}, waitWhy: map[string]int{}}
	cfg := worker.Config{
		Token: worker.NewToken(token), BaseURL: fake.URL, Queues: []string{tasks.DefaultQueue},
		Concurrency: s.concurrency, AttemptTimeout: 5 * time.Second, ResultTTL: tasks.DefaultResultTTL,
		ShutdownTimeout: 5 * time.Second, PollInterval: 50 * time.Millisecond, RetryPollInterval: 250 * time.Millisecond,
		LogLevel:    "error",
		AccountRate: ratelimit.Limit{Requests: s.accountLimit, Window: 10 * time.Second},
	}
	w, err := worker.New(ctx, cfg, worker.WithRedis(rdb), worker.WithObserver(t.observe),
		worker.WithLogger(worker.NewLogger(io.Discard, "error")))
	if err != nil {
		return err
	}
	wctx, stopWorker := context.WithCancel(ctx)
	workerDone := make(chan error, 1)
	go func() { workerDone <- w.Run(wctx) }()
	defer func() { stopWorker(); <-workerDone }()

	say("\n2. The real worker (internal/worker, tasks.Handler, trutoclient) processes them, concurrency %d.", s.concurrency)
	if s.outage > 0 {
		time.AfterFunc(s.outageAfter, func() {
			fake.StartOutage(trutotest.Outage503, s.outage)
			say("\n   !! upstream outage: the fake answers 503 for %s; after 5 failures in a row an account's lane is held (and the\n      circuit opens if failures are most of the last 10 s of requests), so updates wait with no run and no budget spent", s.outage)
		})
	}
	p1start := time.Now()
	breaker := circuit.New(rdb, circuit.Config{})
	if err := waitSettled(ctx, store, breaker, t, int64(s.updates), fake, tty, stderr); err != nil {
		return err
	}
	rep := Report{Updates: s.updates, DeadReasons: map[string]int{}, WaitReasons: map[string]int{}}
	rep.Phase1 = PhaseReport{HandlerRuns: t.runs.Load(), Applied: t.completed.Load(), Retried: t.retried.Load(), Waited: t.waited.Load(),
		DeadLettered: t.dead.Load(), Seconds: time.Since(p1start).Seconds()}
	t.mu.Lock()
	for k, v := range t.deadWhy {
		rep.DeadReasons[k] = v
	}
	for k, v := range t.waitWhy {
		rep.WaitReasons[k] = v
	}
	t.mu.Unlock()
	say("\n   first pass: %d handler runs: %d applied, %d retries after transient failures, %d put back to wait (no budget spent), %d dead-lettered, in %.1fs",
		rep.Phase1.HandlerRuns, rep.Phase1.Applied, rep.Phase1.Retried, rep.Phase1.Waited, rep.Phase1.DeadLettered, rep.Phase1.Seconds)
	say("   put back by reason: %s (waiting for an organization's turn, a rate-limit slot or the circuit costs no run)", countLine(rep.WaitReasons, " "))
	for why, n := range rep.DeadReasons {
		say("   dead-lettered %d x %s", n, why)
	}
	rep.Run.Name = demoRun
	// A dead letter is counted (above) a moment before its run counts it.
	if rep.Run.AfterFirstPass, err = runSettled(ctx, store, func(st tasks.RunStatus) bool { return st.Waiting == 0 }); err != nil {
		return err
	}
	say("   run %q: %s", demoRun, runLine(rep.Run.AfterFirstPass))

	say("\n3. The bad organizations are fixed upstream; replaying the dead letters (same idempotency keys, fresh budget)...")
	fake.UpdateFaults(func(f *trutotest.Faults) { f.OrgStatus = nil })
	replayed := 0
	err = store.DeadLetters().Each(ctx, tasks.Filter{}, func(d tasks.DeadLetter) error {
		out, err := store.Operator().Replay(ctx, d, tasks.ReplayOptions{})
		if err == nil && out.Status == tasks.Replayed {
			replayed++
		}
		return err
	})
	if err != nil {
		return fmt.Errorf("replay: %w", err)
	}
	say("   replayed %d", replayed)
	p2start := time.Now()
	t.dead.Store(0)
	if err := waitSettled(ctx, store, breaker, t, int64(s.updates), fake, tty, stderr); err != nil {
		return err
	}
	rep.Phase2 = PhaseReport{HandlerRuns: t.runs.Load(), Applied: t.completed.Load(), Retried: t.retried.Load(), Waited: t.waited.Load(),
		DeadLettered: t.dead.Load(), Seconds: time.Since(p2start).Seconds()}

	rep.Fake = fake.Stats()
	effects := fake.CountEffects(keys)
	rep.Lost, rep.Duplicates = effects.Lost, effects.ExtraEffects+rep.Fake.DuplicateEffects
	rep.OutOfOrder = fake.OutOfOrder("seq")

	say("\n4. What the fake Truto saw:")
	say("   %d requests; by status %s", rep.Fake.Requests, statusLine(rep.Fake.ByStatus))
	say("   %d effects for %d updates: lost %d, duplicate effects %d, out-of-order effects %d (of %d organizations with %d numbered updates each)",
		rep.Fake.Effects, s.updates, rep.Lost, rep.Duplicates, rep.OutOfOrder, s.orgs(), s.perOrg)
	say("   %d answers came from Truto's idempotency cache: retries of requests that had already applied", rep.Fake.Replays)
	if rep.Run.Final, err = runSettled(ctx, store, func(st tasks.RunStatus) bool { return st.Done }); err != nil {
		return err
	}
	if rep.Run.FirstLines, err = firstLines(ctx, store, shownLines); err != nil {
		return err
	}
	say("\n5. The run %q, as a worker's admin endpoint answers GET /api/runs/%s and its /results:", demoRun, demoRun)
	say("   after the first pass: %s", runLine(rep.Run.AfterFirstPass))
	say("   now:                  %s", runLine(rep.Run.Final))
	say("   its first %d lines:", len(rep.Run.FirstLines))
	for _, l := range rep.Run.FirstLines {
		code := "-"
		if l.StatusCode != 0 {
			code = fmt.Sprint(l.StatusCode)
		}
		say("     line %-3d %-9s %-3s  %s", l.Line, l.State, code, l.Excerpt)
	}
	rep.Seconds = time.Since(start).Seconds()
	say("\nDone in %.1fs. Next: `go test ./...`, then README.md \"Running it for real\".", rep.Seconds)

	enc := json.NewEncoder(stdout)
	enc.SetIndent("", "  ")
	if err := enc.Encode(rep); err != nil {
		return err
	}
	if rep.Lost != 0 || rep.Duplicates != 0 || rep.OutOfOrder != 0 || rep.Phase2.Applied != int64(s.updates) {
		return fmt.Errorf("the run did not come out right: lost %d, duplicates %d, out of order %d, applied %d of %d",
			rep.Lost, rep.Duplicates, rep.OutOfOrder, rep.Phase2.Applied, s.updates)
	}
	if f := rep.Run.Final; f.Total != int64(s.updates) || f.Completed != f.Total {
		return fmt.Errorf("run %q did not come out right: %d lines, %d completed; want %d of %d", demoRun, f.Total, f.Completed, s.updates, s.updates)
	}
	return nil
}

func orgID(i int) string { return fmt.Sprintf("org-%06d", i) }

// enqueueAll enqueues update r of every organization before update r+1, each
// as the next line of run demoRun, in batches (tasks.Producer.EnqueueLines
// keeps each organization's updates in order, so they apply in it). It
// returns the Idempotency-Key each update is sent under, which is what the
// fake counts its effects by.
func enqueueAll(ctx context.Context, p *tasks.Producer, s settings) ([]string, error) {
	var lines []tasks.Line
	var keys []string
	for r := 0; len(lines) < s.updates; r++ {
		for o := 0; o < s.orgs() && len(lines) < s.updates; o++ {
			key, account := fmt.Sprintf("demo-%06d-%d", o, r), fmt.Sprintf("acct-%03d", o%s.accounts)
			keys = append(keys, tasks.UpstreamKey(account, key))
			lines = append(lines, tasks.Line{No: int64(len(lines) + 1), Update: tasks.Update{
				ID: orgID(o), IntegratedAccountID: account, IdempotencyKey: key,
				Body: json.RawMessage(fmt.Sprintf(`{"seq":%d,"remote_data":{"tier":"gold","round":%d}}`, r, r)),
			}})
		}
	}
	_, errs := p.EnqueueLines(ctx, lines, tasks.InRun(demoRun))
	for i, err := range errs {
		if err != nil {
			return nil, fmt.Errorf("enqueue line %d: %w", i+1, err)
		}
	}
	return keys, nil
}

// runSettled waits until the demo's run satisfies settled (its counts trail
// the handler's events by a moment), then returns it with its dead letters.
func runSettled(ctx context.Context, store *tasks.Store, settled func(tasks.RunStatus) bool) (RunSummary, error) {
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		st, err := store.Runs().Get(ctx, demoRun)
		if err != nil {
			return RunSummary{}, err
		}
		if settled(st) {
			if err := store.Runs().DeadLetters(ctx, &st); err != nil {
				return RunSummary{}, err
			}
			return RunSummary{Total: st.Total, Completed: st.Completed, Dead: st.Dead, Purged: st.Purged, Waiting: st.Waiting,
				Sealed: st.Sealed, Done: st.Done, DeadByStatus: st.DeadByStatus, DeadByClass: st.DeadByClass}, nil
		}
		select {
		case <-ctx.Done():
			return RunSummary{}, fmt.Errorf("run %q: gave up waiting for its counts (%+v): %w", demoRun, st, ctx.Err())
		case <-tick.C:
		}
	}
}

// errShown stops reading the run's results once enough lines are shown.
var errShown = errors.New("enough lines")

// firstLines reads the first n lines of the demo's run.
func firstLines(ctx context.Context, store *tasks.Store, n int) ([]LineReport, error) {
	var out []LineReport
	err := store.Runs().EachResult(ctx, demoRun, tasks.ResultFilter{}, func(r tasks.RunResult) error {
		l := LineReport{Line: r.Line, State: string(r.State), StatusCode: r.StatusCode}
		switch {
		case r.Error != nil:
			l.Excerpt = excerpt(strings.TrimSpace(string(r.Error.Class) + ": " + r.Error.Reason + " " + compact(r.Error.Body)))
		case len(r.Response) > 0:
			l.Excerpt = excerpt(compact(r.Response))
		default:
			l.Excerpt = excerpt(r.ResponseText)
		}
		out = append(out, l)
		if len(out) >= n {
			return errShown
		}
		return nil
	})
	if err != nil && !errors.Is(err, errShown) {
		return nil, fmt.Errorf("results of run %q: %w", demoRun, err)
	}
	return out, nil
}

// compact is JSON on one line.
func compact(b []byte) string {
	var buf bytes.Buffer
	if json.Compact(&buf, b) != nil {
		return string(b)
	}
	return buf.String()
}

// excerpt cuts s to excerptRunes runes.
func excerpt(s string) string {
	r := []rune(s)
	if len(r) <= excerptRunes {
		return s
	}
	return string(r[:excerptRunes-1]) + "…"
}

// runLine is a run's counts in one line.
func runLine(r RunSummary) string {
	state := "open"
	if r.Done {
		state = "done"
	}
	dead := "no dead letters"
	if len(r.DeadByStatus) > 0 {
		dead = "dead letters by status " + countLine(r.DeadByStatus, ": ") + ", by class " + countLine(r.DeadByClass, ": ")
	}
	return fmt.Sprintf("%d lines: %d completed, %d dead, %d purged, %d waiting; %s; %s", r.Total, r.Completed, r.Dead,
		r.Purged, r.Waiting, state, dead)
}

// waitSettled waits until every update is applied or dead, redrawing a
// progress line on a terminal.
func waitSettled(ctx context.Context, store *tasks.Store, breaker *circuit.Breaker, t *tally, n int64, fake *trutotest.Server, tty bool, stderr io.Writer) error {
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	for {
		dead, err := store.DeadLetters().Count(ctx)
		if err != nil {
			return err
		}
		done := t.completed.Load()
		if tty {
			st := fake.Stats()
			cs := "closed"
			if c, err := breaker.State(ctx); err == nil && c.Open {
				cs = "OPEN"
			}
			fmt.Fprintf(stderr, "\r   runs %5d  applied %5d/%d  retried %4d  put back %4d  dead %3d  circuit %-6s | fake: %5d requests, 429s %4d, 503s %4d ",
				t.runs.Load(), done, n, t.retried.Load(), t.waited.Load(), dead, cs, st.Requests, st.RateLimited, st.ByStatus[503])
		}
		if done+dead >= n {
			if tty {
				fmt.Fprintln(stderr)
			}
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("gave up waiting (%d applied, %d dead of %d): %w; try a larger --timeout", done, dead, n, ctx.Err())
		case <-tick.C:
		}
	}
}

// countLine is "k<sep>n" for each key of m, sorted by key and joined by
// commas; "none" when m is empty.
func countLine(m map[string]int, sep string) string {
	if len(m) == 0 {
		return "none"
	}
	names := make([]string, 0, len(m))
	for k := range m {
		names = append(names, k)
	}
	sort.Strings(names)
	parts := make([]string, 0, len(names))
	for _, k := range names {
		parts = append(parts, k+sep+strconv.Itoa(m[k]))
	}
	return strings.Join(parts, ", ")
}

func statusLine(m map[int]int) string {
	codes := make([]int, 0, len(m))
	for c := range m {
		codes = append(codes, c)
	}
	sort.Ints(codes)
	parts := make([]string, 0, len(codes))
	for _, c := range codes {
		name := fmt.Sprint(c)
		if c == 0 {
			name = "reset"
		}
		parts = append(parts, fmt.Sprintf("%s: %d", name, m[c]))
	}
	return strings.Join(parts, ", ")
}
