package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
	"unicode/utf8"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/orgsync/orgsync/internal/when"
	"github.com/orgsync/orgsync/tasks"
)

func (a *app) dlqCmd() *cobra.Command {
	c := &cobra.Command{
		Use:   "dlq",
		Short: "Inspect, replay, export and purge dead letters",
		RunE:  groupRunE,
	}
	c.AddCommand(a.dlqListCmd(), a.dlqReplayCmd(), a.dlqExportCmd(), a.dlqPurgeCmd())
	return c
}

// filterFlags select dead letters; every dlq command takes them.
type filterFlags struct {
	account, org, class string
	since, until        string
	status, limit       int
}

func (f *filterFlags) register(fs *pflag.FlagSet) {
	fs.StringVar(&f.account, "account", "", "only this integrated account")
	fs.StringVar(&f.org, "org", "", "only this organization id")
	fs.IntVar(&f.status, "status", 0, "only this upstream HTTP status code")
	fs.StringVar(&f.class, "class", "", "only this class (e.g. permanent, malformed, expired, exhausted)")
	fs.StringVar(&f.since, "since", "", "dead at or after: RFC3339 time, or a duration ago (2h, 7d)")
	fs.StringVar(&f.until, "until", "", "dead before: RFC3339 time, or a duration ago (2h, 7d)")
	fs.IntVar(&f.limit, "limit", 0, "at most this many (0: no limit)")
}

// filter builds the store's filter; now anchors durations like "2h".
func (f *filterFlags) filter(now time.Time, ids []string) (tasks.Filter, error) {
	out := tasks.Filter{TaskIDs: ids, Account: f.account, OrgID: f.org, StatusCode: f.status, Class: tasks.Class(f.class), Limit: f.limit}
	if f.status < 0 || f.limit < 0 {
		return out, usageError("--status and --limit must not be negative")
	}
	var err error
	if out.Since, err = parseWhen("--since", f.since, now); err != nil {
		return out, err
	}
	if out.Until, err = parseWhen("--until", f.until, now); err != nil {
		return out, err
	}
	return out, nil
}

// parseWhen reads a --since/--until value (when.Parse), naming the flag in the error.
func parseWhen(flag, s string, now time.Time) (time.Time, error) {
	t, err := when.Parse(s, now)
	if err != nil {
		return time.Time{}, usageError("%s %v", flag, err)
	}
	return t, nil
}

// selection is `--all | TASK_ID...` of replay and purge.
func selection(cmd string, all bool, ids []string) error {
	switch {
	case all && len(ids) > 0:
		return usageError("dlq %s: give --all or task ids, not both", cmd)
	case !all && len(ids) == 0:
		return usageError("dlq %s: say which dead letters: --all (with filters to narrow it) or TASK_ID... (see `enqueue dlq list`)", cmd)
	}
	return nil
}

func (a *app) dlqListCmd() *cobra.Command {
	var ff filterFlags
	c := &cobra.Command{
		Use:   "list [filters]",
		Short: "List dead letters, oldest first (NDJSON; a table on a terminal)",
		Args:  cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			f, err := ff.filter(a.now(), nil)
			if err != nil {
				return err
			}
			if err := a.connect(c.Context()); err != nil {
				return err
			}
			if !a.stdoutTTY {
				err = a.store.DeadLetters().Each(c.Context(), f, func(d tasks.DeadLetter) error { return a.writeJSON(d) })
			} else {
				err = a.deadLetterTable(c.Context(), f)
			}
			if err != nil {
				return usageError("dlq list: %w", err)
			}
			return nil
		},
	}
	ff.register(c.Flags())
	return c
}

// deadLetterTable prints dead letters for a human at a terminal.
func (a *app) deadLetterTable(ctx context.Context, f tasks.Filter) error {
	tw := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "TASK ID\tDEAD AT\tACCOUNT\tORG ID\tSTATUS\tCLASS\tREASON")
	err := a.store.DeadLetters().Each(ctx, f, func(d tasks.DeadLetter) error {
		_, err := fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", d.TaskID, d.DeadAt.UTC().Format(time.RFC3339),
			cell(d.Update.IntegratedAccountID, 40), cell(d.Update.ID, 30), statusCell(d.StatusCode), cell(string(d.Class), 12), cell(d.Reason, 60))
		return err
	})
	if ferr := tw.Flush(); err == nil {
		err = ferr
	}
	return err
}

// cell makes s safe and short for a table: control characters (which could
// drive the terminal) become spaces, and it is cut to max runes.
func cell(s string, max int) string {
	if s == "" {
		return "-"
	}
	var b strings.Builder
	n := 0
	for _, r := range s {
		if n == max-1 && utf8.RuneCountInString(s) > max {
			b.WriteRune('…')
			break
		}
		if r < 0x20 || r == 0x7f || (r >= 0x80 && r < 0xa0) {
			r = ' '
		}
		b.WriteRune(r)
		n++
	}
	return b.String()
}

func statusCell(code int) string {
	if code == 0 {
		return "-"
	}
	return strconv.Itoa(code)
}

// replayFlags are the flags of `dlq replay`.
type replayFlags struct {
	filterFlags
	all, dryRun, verbose, force bool
	rate                        string
	maxRetry                    int
}

// replaySummary is what `dlq replay` prints.
type replaySummary struct {
	Replayed    int `json:"replayed"`
	WouldReplay int `json:"would_replay"`
	Skipped     int `json:"skipped"`
	Failed      int `json:"failed"`
}

func (a *app) dlqReplayCmd() *cobra.Command {
	var rf replayFlags
	c := &cobra.Command{
		Use:   "replay (--all | TASK_ID...) [filters] [--dry-run] [--rate N/s] [--force]",
		Short: "Re-enqueue dead letters with a fresh retry budget and the same idempotency key",
		Long: "Re-enqueue dead letters with a fresh retry budget and the same idempotency key, then remove them.\n" +
			"A dead letter older than an update since applied to the same organization is skipped as stale\n" +
			"(its body would overwrite newer data) unless --force is given.\n" +
			"Prints {\"replayed\", \"would_replay\", \"skipped\", \"failed\"}; --verbose lists each record on stderr.",
		RunE: func(c *cobra.Command, ids []string) error {
			if err := selection("replay", rf.all, ids); err != nil {
				return err
			}
			interval, err := parseRate(rf.rate)
			if err != nil {
				return err
			}
			if rf.maxRetry < 0 {
				return usageError("--max-retry %d: must not be negative (0 keeps the update's own budget)", rf.maxRetry)
			}
			f, err := rf.filter(a.now(), ids)
			if err != nil {
				return err
			}
			if err := a.connect(c.Context()); err != nil {
				return err
			}
			opts := tasks.ReplayOptions{DryRun: rf.dryRun, MaxRetry: rf.maxRetry, Force: rf.force}
			if c.Flags().Changed("queue") {
				opts.Queue = a.queue // otherwise each goes back to the queue it died in
			}
			return a.replay(c.Context(), f, opts, interval, rf.verbose)
		},
	}
	rf.register(c.Flags())
	fl := c.Flags()
	fl.BoolVar(&rf.all, "all", false, "every dead letter that matches the filters")
	fl.BoolVar(&rf.dryRun, "dry-run", false, "report what would be replayed; change nothing")
	fl.BoolVar(&rf.force, "force", false, "replay even updates a later update of the same organization has overtaken")
	fl.BoolVar(&rf.verbose, "verbose", false, "print each record's outcome on stderr")
	fl.StringVar(&rf.rate, "rate", "0", "at most this many replays per second, e.g. 50/s (0: unlimited)")
	fl.IntVar(&rf.maxRetry, "max-retry", 0, "fresh retry budget (0: the update's own, else the worker's default)")
	return c
}

// parseRate reads "N", "N/s" (or "N/m") into the interval between replays.
func parseRate(s string) (time.Duration, error) {
	num, per := s, time.Second
	if n, ok := strings.CutSuffix(s, "/s"); ok {
		num = n
	} else if n, ok := strings.CutSuffix(s, "/m"); ok {
		num, per = n, time.Minute
	}
	r, err := strconv.ParseFloat(num, 64)
	if err != nil || r < 0 {
		return 0, usageError("--rate %q: expected replays per second like 50/s, or 0 for unlimited", s)
	}
	if r == 0 {
		return 0, nil
	}
	return time.Duration(float64(per) / r), nil
}

func (a *app) replay(ctx context.Context, f tasks.Filter, opts tasks.ReplayOptions, interval time.Duration, verbose bool) error {
	var sum replaySummary
	seen := map[string]bool{}
	max := int64(-1)
	if len(f.TaskIDs) > 0 {
		max = int64(len(f.TaskIDs))
	}
	bar := a.startProgress(max, "replay", "records")
	var next time.Time
	err := a.store.DeadLetters().Each(ctx, f, func(d tasks.DeadLetter) error {
		if len(f.TaskIDs) > 0 {
			seen[d.TaskID] = true
		}
		if err := waitUntil(ctx, next); err != nil {
			return err
		}
		if interval > 0 {
			next = time.Now().Add(interval)
		}
		out, err := a.store.Operator().Replay(ctx, d, opts)
		bar.add(1)
		if err != nil {
			sum.Failed++
			a.logf("%s: replay failed: %v", d.TaskID, err)
			return nil // one record's trouble does not stop the others
		}
		switch out.Status {
		case tasks.Replayed:
			sum.Replayed++
		case tasks.WouldReplay:
			sum.WouldReplay++
		default:
			sum.Skipped++
		}
		if verbose {
			line := fmt.Sprintf("%s: %s (account %q, key %q)", out.TaskID, out.Status, out.Account, out.IdempotencyKey)
			if out.Reason != "" {
				line += ": " + out.Reason
			}
			a.logf("%s", line)
		}
		return nil
	})
	a.finishProgress(bar)
	missing := a.reportMissing(ctx, "replay", f, seen)
	if werr := a.writeJSON(sum); werr != nil && err == nil {
		err = werr
	}
	if sum.Skipped > 0 && !verbose {
		a.logf("%d dead letters skipped (malformed payloads cannot be replayed); --verbose says which", sum.Skipped)
	}
	switch {
	case err != nil:
		return usageError("dlq replay stopped: %w (what was replayed stays replayed; run it again to continue)", err)
	case sum.Failed > 0:
		return usageError("dlq replay: %d dead letters failed to replay; they are still dead letters, run it again", sum.Failed)
	case missing > 0:
		return &exitError{code: exitRefused}
	}
	return nil
}

// waitUntil waits for t, or for ctx.
func waitUntil(ctx context.Context, t time.Time) error {
	d := time.Until(t)
	if d <= 0 {
		return ctx.Err()
	}
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-timer.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// reportMissing tells the user which task ids given on the command line were
// not processed, and why; it returns how many.
func (a *app) reportMissing(ctx context.Context, cmd string, f tasks.Filter, seen map[string]bool) int {
	n := 0
	for _, id := range f.TaskIDs {
		if seen[id] {
			continue
		}
		n++
		_, err := a.store.DeadLetters().Get(ctx, id)
		switch {
		case errors.Is(err, tasks.ErrNotFound):
			a.logf("%s: no dead letter with this task id; not %sed (see `enqueue dlq list`; `enqueue status %s` tells where it is)", id, cmd, id)
		case err != nil:
			a.logf("%s: not %sed: %v", id, cmd, err)
		default:
			a.logf("%s: does not match the filters; not %sed", id, cmd)
		}
	}
	return n
}

func (a *app) dlqExportCmd() *cobra.Command {
	var ff filterFlags
	c := &cobra.Command{
		Use:   "export [filters]",
		Short: "Print dead letters as NDJSON updates that `enqueue bulk` accepts back",
		Long: "Print each dead letter as the update it was, with its idempotency key, one per line, so that\n" +
			"`enqueue bulk` can enqueue them again (after `dlq purge`) under the same keys.",
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			f, err := ff.filter(a.now(), nil)
			if err != nil {
				return err
			}
			if err := a.connect(c.Context()); err != nil {
				return err
			}
			skipped := 0
			err = a.store.DeadLetters().Each(c.Context(), f, func(d tasks.DeadLetter) error {
				u := d.Update
				if d.IdempotencyKey != "" {
					u.IdempotencyKey = d.IdempotencyKey
				}
				if d.Class == tasks.ClassMalformed || u.IdempotencyKey == "" {
					skipped++
					a.logf("%s: skipped: malformed payload, no update to export (its bytes are in raw_payload of `enqueue dlq list`)", d.TaskID)
					return nil
				}
				if verr := u.Validate(); verr != nil {
					skipped++
					a.logf("%s: skipped: its update is not valid (%v); fix it from `enqueue dlq list` by hand", d.TaskID, verr)
					return nil
				}
				return a.writeJSON(u)
			})
			if err != nil {
				return usageError("dlq export: %w", err)
			}
			if skipped > 0 {
				a.logf("%d dead letters skipped", skipped)
			}
			return nil
		},
	}
	ff.register(c.Flags())
	return c
}

func (a *app) dlqPurgeCmd() *cobra.Command {
	var ff filterFlags
	var all, yes bool
	c := &cobra.Command{
		Use:   "purge (--all | TASK_ID...) [filters] [--yes]",
		Short: "Delete dead letters for good",
		Long: "Delete dead letters (and asynq's archived copy, which would otherwise block their key).\n" +
			"Without --yes it asks on stderr and reads the answer from stdin. Prints {\"purged\": N}.",
		RunE: func(c *cobra.Command, ids []string) error {
			if err := selection("purge", all, ids); err != nil {
				return err
			}
			f, err := ff.filter(a.now(), ids)
			if err != nil {
				return err
			}
			if err := a.connect(c.Context()); err != nil {
				return err
			}
			return a.purge(c.Context(), f, yes)
		},
	}
	ff.register(c.Flags())
	c.Flags().BoolVar(&all, "all", false, "every dead letter that matches the filters")
	c.Flags().BoolVar(&yes, "yes", false, "do not ask for confirmation")
	return c
}

func (a *app) purge(ctx context.Context, f tasks.Filter, yes bool) error {
	if !yes {
		n := 0
		if err := a.store.DeadLetters().Each(ctx, f, func(tasks.DeadLetter) error { n++; return nil }); err != nil {
			return usageError("dlq purge: count dead letters: %w", err)
		}
		if n == 0 {
			a.logf("no dead letters match; nothing to purge")
			missing := a.reportMissing(ctx, "purge", f, nil)
			if err := a.writeJSON(map[string]int{"purged": 0}); err != nil {
				return err
			}
			if missing > 0 {
				return &exitError{code: exitRefused}
			}
			return nil
		}
		fmt.Fprintf(a.stderr, "purge %d dead letters? [y/N] ", n)
		answer, _ := bufio.NewReader(a.stdin).ReadString('\n')
		if ans := strings.ToLower(strings.TrimSpace(answer)); ans != "y" && ans != "yes" {
			fmt.Fprintln(a.stderr)
			if err := a.writeJSON(map[string]int{"purged": 0}); err != nil {
				return err
			}
			return refused("not confirmed; nothing purged (answer y, or pass --yes)")
		}
		// Purge what was confirmed: the oldest n matches. Letters that died
		// since the count are newer and stay.
		if f.Limit == 0 || f.Limit > n {
			f.Limit = n
		}
	}
	purged := 0
	seen := map[string]bool{}
	err := a.store.DeadLetters().Each(ctx, f, func(d tasks.DeadLetter) error {
		seen[d.TaskID] = true
		ok, err := a.store.Operator().Purge(ctx, d)
		if err != nil {
			return err
		}
		if ok {
			purged++
		}
		return nil
	})
	missing := a.reportMissing(ctx, "purge", f, seen)
	if werr := a.writeJSON(map[string]int{"purged": purged}); werr != nil && err == nil {
		err = werr
	}
	switch {
	case err != nil:
		return usageError("dlq purge stopped after %d: %w; run it again to continue", purged, err)
	case missing > 0:
		return &exitError{code: exitRefused}
	}
	return nil
}
