package main

import (
	"bufio"
	"context"
	"encoding/json"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/orgsync/orgsync/tasks"
)

// Defaults of `enqueue events`.
const (
	defaultFollow      = false
	defaultEventsAfter = ""              // from the oldest event kept
	defaultEventsLimit = 0               // no limit
	defaultEventsRun   = ""              // every run, and updates in none
	eventsPage         = 1000            // events read per round trip
	eventsBlock        = 2 * time.Second // how long one read of --follow waits for new events
)

// streamID is a Redis Stream entry id as --after takes it: ms or ms-seq.
var streamID = regexp.MustCompile(`^[0-9]{1,20}(-[0-9]{1,20})?$`)

// eventsFlags are the flags of `enqueue events`.
type eventsFlags struct {
	follow bool
	run    string
	after  string
	limit  int
}

func (a *app) eventsCmd() *cobra.Command {
	var f eventsFlags
	c := &cobra.Command{
		Use:   "events [--follow] [--run NAME] [--after ID] [--limit N]",
		Short: "Print outcome events (completed, dead, run_done) as NDJSON, oldest kept first",
		Long: "Print the outcome events as NDJSON, oldest kept first: each update that completed or was\n" +
			"dead-lettered (type completed or dead: task_id, idempotency_key, integrated_account_id,\n" +
			"organization_id, runs, status_code, class, reason, attempts) and each run that became done\n" +
			"(type run_done: run and its counts). Events carry no body: `enqueue status TASK_ID` prints the\n" +
			"stored result. The stream keeps about the newest 100,000 events; an event can appear twice.\n" +
			"\n" +
			"--after ID prints only events after the one with that id (each event's \"id\"; $ for only new\n" +
			"ones), so a reader that keeps the last id it handled resumes where it stopped. --run NAME keeps\n" +
			"the events of that run: its updates' events and its run_done.\n" +
			"Without --follow it prints every event kept (up to --limit) and exits 0. With --follow it then\n" +
			"keeps printing new events as they come, until --limit or until interrupted (Ctrl-C, SIGTERM),\n" +
			"and exits 0.",
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if f.run != "" {
				if err := tasks.ValidateRunName(f.run); err != nil {
					return usageError("--run %q: %v", f.run, err)
				}
			}
			if f.after != "" && f.after != "$" && !streamID.MatchString(f.after) {
				return usageError("--after %q: expected an event id like 1764331200000-0 (the \"id\" of an event), or $ for only new events", f.after)
			}
			if f.limit < 0 {
				return usageError("--limit %d must not be negative (0: no limit)", f.limit)
			}
			if err := a.connect(c.Context()); err != nil {
				return err
			}
			return a.events(c.Context(), f)
		},
	}
	fl := c.Flags()
	fl.BoolVar(&f.follow, "follow", defaultFollow, "keep printing new events until interrupted")
	fl.StringVar(&f.run, "run", defaultEventsRun, "only the events of run `NAME` (empty: all)")
	fl.StringVar(&f.after, "after", defaultEventsAfter, "only events after the event with this `ID` ($: only new ones; empty: from the oldest kept)")
	fl.IntVar(&f.limit, "limit", defaultEventsLimit, "stop after printing this many events (0: no limit)")
	return c
}

// events prints the outcome events f selects, through a buffer flushed after
// every read that caught up with the stream.
func (a *app) events(ctx context.Context, f eventsFlags) error {
	bw := bufio.NewWriterSize(a.stdout, 64<<10)
	enc := json.NewEncoder(bw)
	enc.SetEscapeHTML(false)
	flush := func(err error) error {
		if ferr := bw.Flush(); err == nil && ferr != nil {
			err = usageError("events: write output: %w", ferr)
		}
		return err
	}
	after := f.after
	switch after {
	case "$":
		id, err := a.store.Events().LastID(ctx)
		if err != nil {
			return usageError("events: %w", err)
		}
		after = id
	case "", "0":
	default:
		a.warnTrimmed(ctx, after)
	}
	printed := 0
	var block time.Duration // 0 until caught up with --follow
	for {
		evs, err := a.readEvents(ctx, after, block)
		if err != nil {
			switch {
			case ctx.Err() != nil && f.follow:
				return flush(nil) // interrupted: the way --follow ends
			case ctx.Err() != nil:
				return flush(usageError("events: interrupted; continue with --after %s", after))
			}
			return flush(usageError("events: %w; continue with --after %s", err, after))
		}
		for _, e := range evs {
			after = e.ID
			if f.run != "" && !e.InRun(f.run) {
				continue
			}
			if err := enc.Encode(e); err != nil {
				return usageError("events: write output: %w", err)
			}
			if printed++; f.limit > 0 && printed >= f.limit {
				return flush(nil)
			}
		}
		if len(evs) < eventsPage {
			// Caught up: what was read is out before waiting for more.
			if err := flush(nil); err != nil || !f.follow {
				return err
			}
			block = eventsBlock
		}
	}
}

// readEvents reads the events after after, waiting up to block for new ones.
// A blocked read returns as soon as ctx ends: go-redis would only notice at
// the end of the block, and Ctrl-C should not wait for it (the read itself
// ends when the connection closes, as the program exits).
func (a *app) readEvents(ctx context.Context, after string, block time.Duration) ([]tasks.OutcomeEvent, error) {
	if block <= 0 {
		return a.store.Events().Read(ctx, after, eventsPage, 0)
	}
	type read struct {
		evs []tasks.OutcomeEvent
		err error
	}
	done := make(chan read, 1)
	go func() {
		evs, err := a.store.Events().Read(ctx, after, eventsPage, block)
		done <- read{evs, err}
	}()
	select {
	case r := <-done:
		return r.evs, r.err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// warnTrimmed warns when the stream no longer keeps the event reading starts
// after: the stream is trimmed from its oldest end, so the events between it
// and the oldest kept, if there were any, are gone too.
func (a *app) warnTrimmed(ctx context.Context, after string) {
	oldest, err := a.rdb.XRangeN(ctx, a.store.Events().Key(), "-", "+", 1).Result()
	if err != nil || len(oldest) == 0 || !streamIDLess(after, oldest[0].ID) {
		return
	}
	a.logf("events: the stream no longer keeps event %s (it keeps about the newest %d; the oldest kept is %s): "+
		"events between the two, if any, were trimmed and cannot be printed", after, tasks.DefaultEventsMaxLen, oldest[0].ID)
}

// streamIDLess reports whether stream id x comes before y ("ms" is "ms-0").
func streamIDLess(x, y string) bool {
	parse := func(id string) (uint64, uint64) {
		ms, seq, _ := strings.Cut(id, "-")
		m, _ := strconv.ParseUint(ms, 10, 64)
		s, _ := strconv.ParseUint(seq, 10, 64)
		return m, s
	}
	xm, xs := parse(x)
	ym, ys := parse(y)
	return xm < ym || (xm == ym && xs < ys)
}
