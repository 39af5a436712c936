package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/orgsync/orgsync/tasks"
)

// Defaults of the waiting flags (`runs status --wait`, `bulk --run --wait`).
const (
	defaultWait        = false
	defaultPoll        = 500 * time.Millisecond
	defaultWaitTimeout = time.Duration(0) // no limit
)

// Defaults of `runs results`: every line.
const (
	defaultResultState  = ""
	defaultResultStatus = 0
)

// errWaitTimeout ends a wait that --timeout cut short.
var errWaitTimeout = errors.New("timed out")

func (a *app) runsCmd() *cobra.Command {
	c := &cobra.Command{
		Use:   "runs",
		Short: "Follow runs (bulk files enqueued with --run): list them, wait for one, print what became of each line",
		Long: "A run is the set of updates one `enqueue bulk FILE --run NAME` enqueued, line by line. It is done\n" +
			"once its bulk read every line (sealed) and every update in it ended: completed, dead or purged.\n" +
			"Runs are kept as long as results (--result-ttl), renewed by every change.",
		RunE: groupRunE,
	}
	c.AddCommand(a.runsListCmd(), a.runsStatusCmd(), a.runsResultsCmd())
	return c
}

// runNotFound is the error for an unknown run name (exit 1).
func (a *app) runNotFound(name string) error {
	return refused("run %q not found: `enqueue runs list` shows the runs kept (they expire with --result-ttl, now %s)", name, a.resultTTL)
}

// runRow is one run as `runs list` prints it. Finished is null until the run
// is done.
type runRow struct {
	Run       string     `json:"run"`
	Started   time.Time  `json:"started"`
	Total     int64      `json:"total"`
	Completed int64      `json:"completed"`
	Dead      int64      `json:"dead"`
	Purged    int64      `json:"purged"`
	Waiting   int64      `json:"waiting"`
	Sealed    bool       `json:"sealed"`
	Done      bool       `json:"done"`
	Finished  *time.Time `json:"finished"`
}

func rowOf(st tasks.RunStatus) runRow {
	r := runRow{Run: st.Run, Started: st.Started, Total: st.Total, Completed: st.Completed, Dead: st.Dead,
		Purged: st.Purged, Waiting: st.Waiting, Sealed: st.Sealed, Done: st.Done}
	if !st.Finished.IsZero() {
		r.Finished = &st.Finished
	}
	return r
}

// runStatusJSON is what `runs status` prints: a run's counts and its dead
// letters by upstream status and by class, every field always present.
type runStatusJSON struct {
	runRow
	DeadByStatus map[string]int `json:"dead_by_status"`
	DeadByClass  map[string]int `json:"dead_by_class"`
}

func (a *app) runsListCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "list",
		Short: "List the runs kept, oldest first (NDJSON; a table on a terminal)",
		Long: "List the runs kept, oldest first: one object per run with run, started, total, completed, dead,\n" +
			"purged, waiting, sealed, done and finished (null until done). NDJSON when stdout is not a\n" +
			"terminal; a table on a terminal.",
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if err := a.connect(c.Context()); err != nil {
				return err
			}
			runs, err := a.store.Runs().List(c.Context())
			if err != nil {
				return usageError("runs list: %w", err)
			}
			if a.stdoutTTY {
				return a.runTable(runs)
			}
			for _, st := range runs {
				if err := a.writeJSON(rowOf(st)); err != nil {
					return err
				}
			}
			return nil
		},
	}
}

// runTable prints runs for a human at a terminal.
func (a *app) runTable(runs []tasks.RunStatus) error {
	if len(runs) == 0 {
		a.logf("no runs kept (a run is made by `enqueue bulk FILE --run NAME`)")
		return nil
	}
	tw := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "RUN\tSTARTED\tTOTAL\tCOMPLETED\tDEAD\tPURGED\tWAITING\tSTATE\tFINISHED")
	for _, st := range runs {
		state, finished := "sealed", "-"
		switch {
		case st.Done:
			state, finished = "done", st.Finished.UTC().Format(time.RFC3339)
		case !st.Sealed:
			state = "open"
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%d\t%d\t%d\t%s\t%s\n", cell(st.Run, 40), st.Started.UTC().Format(time.RFC3339),
			st.Total, st.Completed, st.Dead, st.Purged, st.Waiting, state, finished)
	}
	return tw.Flush()
}

// waitFlags are --wait, --timeout and --poll.
type waitFlags struct {
	wait    bool
	timeout time.Duration
	poll    time.Duration
}

func (w *waitFlags) register(fs *pflag.FlagSet, waitHelp string) {
	fs.BoolVar(&w.wait, "wait", defaultWait, waitHelp)
	fs.DurationVar(&w.timeout, "timeout", defaultWaitTimeout, "with --wait: give up after this long, exit 2 (0: wait without limit)")
	fs.DurationVar(&w.poll, "poll", defaultPoll, "with --wait: how often to read the run's counts")
}

// check refuses --timeout and --poll without --wait, and bad durations.
func (w *waitFlags) check(fs *pflag.FlagSet) error {
	for _, name := range []string{"timeout", "poll"} {
		if fs.Changed(name) && !w.wait {
			return usageError("--%s only applies with --wait", name)
		}
	}
	if w.timeout < 0 {
		return usageError("--timeout %s must not be negative (0: no limit)", w.timeout)
	}
	if w.poll <= 0 {
		return usageError("--poll %s must be positive, e.g. 500ms", w.poll)
	}
	return nil
}

func (a *app) runsStatusCmd() *cobra.Command {
	var w waitFlags
	c := &cobra.Command{
		Use:   "status NAME [--wait [--timeout D] [--poll D]]",
		Short: "Print where a run stands; --wait waits until it is done",
		Long: "Print one object: run, started, total, completed, dead, purged, waiting, sealed, done, finished\n" +
			"(null until done), dead_by_status and dead_by_class (the run's dead letters by upstream status and\n" +
			"by class). Without --wait it exits 0 once printed.\n" +
			"\n" +
			"--wait reads the run's counts every --poll until it is done, showing a progress bar with rate and\n" +
			"ETA on stderr when stderr is a terminal (nothing otherwise), then prints the final object.\n" +
			"Exit 0 when every update completed; 1 when any is dead or purged (`enqueue runs results NAME\n" +
			"--state dead` says why); 2 when --timeout passed first (the object printed is where the run\n" +
			"stood then), on interruption, or on a usage or connection error. Redis going away while it\n" +
			"waits (a restart, a Sentinel failover) is waited through, with a line on stderr when it goes\n" +
			"and one when it is back; --timeout still applies.\n" +
			"A run is done only once sealed: a bulk that was interrupted or failed half-way leaves its run\n" +
			"open, even with nothing waiting, until the same file is run again with the same --run.\n" +
			"An unknown run name exits 1.",
		Args: cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			if err := w.check(c.Flags()); err != nil {
				return err
			}
			if err := a.connect(c.Context()); err != nil {
				return err
			}
			return a.runStatus(c.Context(), args[0], w)
		},
	}
	w.register(c.Flags(), "wait until the run is done; exit 0 all completed, 1 any dead or purged, 2 timed out")
	return c
}

// runStatus prints run name's status, after waiting for it to be done with
// w.wait, and returns the error its exit code comes from.
func (a *app) runStatus(ctx context.Context, name string, w waitFlags) error {
	var st tasks.RunStatus
	var waitErr error
	if w.wait {
		st, waitErr = a.waitRun(ctx, name, w)
	} else {
		st, waitErr = a.store.Runs().Get(ctx, name)
	}
	switch {
	case errors.Is(waitErr, tasks.ErrNotFound):
		return a.runNotFound(name)
	case st.Run == "" && ctx.Err() != nil:
		return usageError("interrupted before run %q could be read", name)
	case st.Run == "":
		return usageError("runs status %s: %w", name, waitErr)
	}
	// Interrupted: still say where the run stood, within a short time.
	dctx := ctx
	if ctx.Err() != nil {
		var cancel context.CancelFunc
		dctx, cancel = context.WithTimeout(context.WithoutCancel(ctx), pingTimeout)
		defer cancel()
	}
	if err := a.store.Runs().DeadLetters(dctx, &st); err != nil {
		return usageError("runs status %s: %w", name, err)
	}
	if err := a.writeJSON(runStatusJSON{runRow: rowOf(st), DeadByStatus: st.DeadByStatus, DeadByClass: st.DeadByClass}); err != nil {
		return err
	}
	open := ""
	if !st.Sealed {
		open = fmt.Sprintf("; the run is open: its bulk has not read every line (still running, or stopped half-way: "+
			"run the same file again with --run %s to finish it)", name)
	}
	switch {
	case errors.Is(waitErr, errWaitTimeout):
		return usageError("run %s not done after --timeout %s: %d of %d still waiting%s; wait again with `enqueue runs status %s --wait`",
			name, w.timeout, st.Waiting, st.Total, open, name)
	case waitErr != nil && ctx.Err() != nil:
		return usageError("interrupted while waiting for run %s: %d of %d still waiting%s", name, st.Waiting, st.Total, open)
	case waitErr != nil:
		return usageError("waiting for run %s: %w; wait again with `enqueue runs status %s --wait`", name, waitErr, name)
	case !w.wait:
		return nil
	case st.Dead+st.Purged > 0:
		return refused("run %s done: %d completed, %d dead, %d purged of %d; `enqueue runs results %s --state dead` says why",
			name, st.Completed, st.Dead, st.Purged, st.Total, name)
	}
	return nil
}

// waitRun reads run name's counts every w.poll until it is done, and returns
// the last counts read: with nil once done, errWaitTimeout once w.timeout
// passed, ctx's error when ctx ended, or Redis's error (ErrNotFound for an
// unknown run). Redis away for a while (redisAway) is waited through, said
// once on stderr when it goes and once when it is back.
func (a *app) waitRun(ctx context.Context, name string, w waitFlags) (tasks.RunStatus, error) {
	var deadline time.Time
	if w.timeout > 0 {
		deadline = time.Now().Add(w.timeout)
	}
	var last tasks.RunStatus
	var bar *progress
	var ended0 int64
	var away time.Time // since when Redis has not answered; zero while it does
	defer func() {
		if bar != nil {
			a.finishProgress(bar)
		}
	}()
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return last, ctx.Err()
		case <-timer.C:
		}
		st, err := a.store.Runs().Get(ctx, name)
		switch {
		case err != nil && ctx.Err() != nil:
			return last, ctx.Err()
		case err != nil && !redisAway(err):
			return last, err
		case err != nil:
			// A restart, a Sentinel failover: the wait goes on (until
			// --timeout, if one was given), as the workers' does.
			if away.IsZero() {
				away = time.Now()
				a.logf("run %s: Redis unreachable (%v); still waiting", name, err)
			}
		default:
			if !away.IsZero() {
				a.logf("run %s: Redis reachable again after %s", name, time.Since(away).Round(100*time.Millisecond))
				away = time.Time{}
			}
			last = st
			if st.Done {
				return st, nil
			}
			ended := st.Completed + st.Dead + st.Purged
			if bar == nil {
				// The bar counts what ends while we wait, so that its rate and
				// ETA are this wait's; the description has the run's totals.
				ended0 = ended
				bar = a.startGauge(max(st.Total-ended0, 1), "", "updates")
			}
			desc := fmt.Sprintf("run %s: %d/%d ended (%d dead, %d purged)", name, ended, st.Total, st.Dead, st.Purged)
			if !st.Sealed {
				desc += " (open: its bulk is not finished)"
			}
			bar.set(max(ended-ended0, 0), max(st.Total-ended0, 1), desc)
		}
		next := w.poll
		if !deadline.IsZero() {
			left := time.Until(deadline)
			if left <= 0 {
				return last, errWaitTimeout
			}
			next = min(next, left)
		}
		timer.Reset(next)
	}
}

func (a *app) runsResultsCmd() *cobra.Command {
	var state string
	var status int
	c := &cobra.Command{
		Use:   "results NAME [--state S] [--status N]",
		Short: "Print what became of each line of a run, in line order (NDJSON)",
		Long: "Print one object per line of the run, in line order: line, idempotency_key, task_id, state\n" +
			"(" + tasks.Join(tasks.RunResultStates) + "), status_code, and Truto's response\n" +
			"(response, or response_text when it was not JSON) or, for a dead update, error {class, reason, body}.\n" +
			"Lines that were blank or invalid in the file are not in the run. Streams: memory stays flat\n" +
			"whatever the run's size. An unknown run exits 1.",
		Args: cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			if _, ok := tasks.ParseRunResultState(state); state != "" && !ok {
				return usageError("--state %q: expected one of %s", state, tasks.Join(tasks.RunResultStates))
			}
			if status < 0 {
				return usageError("--status %d: expected an HTTP status code like 422 (0: any)", status)
			}
			if err := a.connect(c.Context()); err != nil {
				return err
			}
			return a.runResults(c.Context(), args[0], tasks.ResultFilter{State: tasks.State(state), StatusCode: status})
		},
	}
	c.Flags().StringVar(&state, "state", defaultResultState, "only lines in this state: "+tasks.Join(tasks.RunResultStates)+" (empty: all)")
	c.Flags().IntVar(&status, "status", defaultResultStatus, "only lines with this upstream HTTP status code (0: any)")
	return c
}

// runResults streams the run's results to stdout, one line each, through a
// buffer flushed at the end (and at each line on a terminal).
func (a *app) runResults(ctx context.Context, name string, f tasks.ResultFilter) error {
	bw := bufio.NewWriterSize(a.stdout, 64<<10)
	enc := json.NewEncoder(bw)
	enc.SetEscapeHTML(false)
	var werr error
	err := a.store.Runs().EachResult(ctx, name, f, func(r tasks.RunResult) error {
		if werr = enc.Encode(r); werr == nil && a.stdoutTTY {
			werr = bw.Flush()
		}
		return werr
	})
	if ferr := bw.Flush(); werr == nil && ferr != nil {
		werr = ferr
	}
	switch {
	case werr != nil:
		return usageError("runs results %s: write output: %w", name, werr)
	case errors.Is(err, tasks.ErrNotFound):
		return a.runNotFound(name)
	case err != nil && ctx.Err() != nil:
		return usageError("runs results %s: interrupted", name)
	case err != nil:
		return usageError("runs results %s: %w (the lines printed so far are valid; run it again for all)", name, err)
	}
	return nil
}

// redisAway says whether err is Redis away for a moment, as in a restart or
// a Sentinel failover: a connection refused, reset, cut or timed out, or an
// answer Redis gives while it cannot serve yet (LOADING its data, READONLY
// as a demoted master, MASTERDOWN, CLUSTERDOWN, TRYAGAIN), or go-redis
// finding no sentinel to ask.
func redisAway(err error) bool {
	var ne net.Error
	if errors.As(err, &ne) || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE) {
		return true
	}
	var re redis.Error
	if errors.As(err, &re) {
		for _, p := range []string{"LOADING ", "READONLY ", "MASTERDOWN ", "CLUSTERDOWN ", "TRYAGAIN "} {
			if strings.HasPrefix(re.Error(), p) {
				return true
			}
		}
	}
	return strings.Contains(err.Error(), "all sentinels specified in configuration are unreachable")
}
