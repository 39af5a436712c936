package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"os"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spf13/cobra"

	"github.com/orgsync/orgsync/tasks"
)

// maxLineBytes is the longest NDJSON line bulk reads: the largest body plus
// generous room for the rest of the update.
const maxLineBytes = tasks.MaxBodyBytes + 64<<10

// bulkSummary is what `enqueue bulk` prints. Read counts non-blank lines, and
// Read = Enqueued + Duplicates + Invalid + Failed.
type bulkSummary struct {
	Run        string  `json:"run,omitempty"`
	Read       int64   `json:"read"`
	Enqueued   int64   `json:"enqueued"`
	Duplicates int64   `json:"duplicates"`
	Invalid    int64   `json:"invalid"`
	Failed     int64   `json:"failed"`
	Seconds    float64 `json:"seconds"`
	PerSecond  float64 `json:"per_second"`
}

// Defaults of the flags of `enqueue bulk`.
const (
	defaultRun         = "" // no run
	defaultConcurrency = 16
	defaultMaxRetry    = 0 // the worker's default
)

// bulkFlags are the flags of `enqueue bulk`.
type bulkFlags struct {
	run         string
	concurrency int
	maxRetry    int
	waitFlags
}

func (a *app) bulkCmd() *cobra.Command {
	var f bulkFlags
	c := &cobra.Command{
		Use:   "bulk [FILE | -] [--run NAME [--wait [--timeout D]]]",
		Short: "Enqueue every update of an NDJSON file (or stdin)",
		Long: "Stream an NDJSON file of updates (one JSON object per line, the format of README.md \"The update\") and\n" +
			"enqueue the valid lines; each invalid line is reported on stderr with its number and reason.\n" +
			"Prints one summary object: {\"run\", \"read\", \"enqueued\", \"duplicates\", \"invalid\", \"failed\", ...}.\n" +
			"Exit 1 when any line was invalid, 2 when Redis failed.\n" +
			"\n" +
			"With --run NAME the file is a run: each update is recorded at its line number (blank lines count)\n" +
			"and lines without idempotency_key get a key derived from NAME, the line number and the line's\n" +
			"content, so re-running the same file with the same NAME enqueues nothing twice and adds nothing\n" +
			"to the run twice. Once every line is in, the run is sealed: it is done when every update in it\n" +
			"has ended (`enqueue runs status NAME`). A bulk that stops half-way (Redis failed, interrupted)\n" +
			"leaves the run open, never done, until the same file is run again with the same --run.\n" +
			"\n" +
			"--wait then waits for the run as `enqueue runs status NAME --wait` does: stdout gets the summary\n" +
			"line as soon as every line is in, then, once the run is done (or --timeout passes), a second line,\n" +
			"the run's status object. The exit code is the worse of the bulk's and the wait's: 0 every line\n" +
			"valid and every update completed; 1 an invalid line, or an update dead or purged; 2 Redis failed\n" +
			"or --timeout passed. There is no second line when the bulk stopped half-way (the run cannot be\n" +
			"done) or no line of the file entered the run.",
		Args: cobra.MaximumNArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			if f.concurrency < 1 {
				return usageError("--concurrency %d: must be at least 1", f.concurrency)
			}
			if f.maxRetry < 0 {
				return usageError("--max-retry %d: must not be negative (0 is the worker's default)", f.maxRetry)
			}
			if c.Flags().Changed("run") {
				if err := tasks.ValidateRunName(f.run); err != nil {
					return usageError("--run %q: %v", f.run, err)
				}
			}
			if f.wait && f.run == "" {
				return usageError("--wait waits for a run: give it a name with --run NAME")
			}
			if err := f.waitFlags.check(c.Flags()); err != nil {
				return err
			}
			var src io.Reader = a.stdin
			if len(args) == 1 && args[0] != "-" {
				file, err := os.Open(args[0])
				if err != nil {
					return usageError("bulk: %w; give a readable NDJSON file, or - for stdin", err)
				}
				defer file.Close()
				src = file
			}
			if err := a.connect(c.Context()); err != nil {
				return err
			}
			sum, err := a.bulk(c.Context(), src, f)
			sealed := false
			if err == nil && sum.Failed == 0 && f.run != "" {
				sealed, err = a.sealRun(c.Context(), f.run)
			}
			if werr := a.writeJSON(sum); werr != nil && err == nil {
				err = werr
			}
			code := exitOK
			switch {
			case err != nil:
				return &exitError{code: exitUsage, err: err}
			case sum.Failed > 0:
				return &exitError{code: exitUsage}
			case sum.Invalid > 0:
				code = exitRefused
			}
			if f.wait && sealed {
				if err := a.runStatus(c.Context(), f.run, f.waitFlags); err != nil {
					var ee *exitError
					if errors.As(err, &ee) && ee.code < code {
						ee.code = code
					}
					return err
				}
			}
			if code != exitOK {
				return &exitError{code: code}
			}
			return nil
		},
	}
	fl := c.Flags()
	fl.StringVar(&f.run, "run", defaultRun, "`NAME` of this run: records each update at its line, derives stable idempotency keys for lines without one, and seals the run once every line is in (see 'enqueue runs --help')")
	fl.IntVar(&f.concurrency, "concurrency", defaultConcurrency, "enqueues in flight at once")
	fl.IntVar(&f.maxRetry, "max-retry", defaultMaxRetry, "retry budget of each update (0: the worker's default)")
	f.waitFlags.register(fl, "after the bulk, wait until the run is done (needs --run), as 'enqueue runs status --wait' does")
	return c
}

// bulkJob is one valid line on its way to the queue.
type bulkJob struct {
	line int
	u    tasks.Update
}

// Batches: each lane sends up to tasks.DefaultBatchSize lines, or about
// maxBatchBytes of bodies, per call (a fixed handful of Redis round trips);
// at most maxBulkBytes of bodies are read and not yet enqueued, whatever the
// number of lanes.
const (
	maxBatchBytes = 4 << 20
	maxBulkBytes  = 16 << 20
	// bulkMemoryLimit is the Go runtime's soft memory limit while bulk runs
	// (unless GOMEMLIMIT says otherwise): the garbage collector works harder
	// near it instead of letting the heap double, so a file of any length
	// stays under about 64 MiB of resident memory.
	bulkMemoryLimit = 40 << 20
)

// byteBudget bounds the bytes held between reading and enqueueing.
type byteBudget struct {
	mu   sync.Mutex
	cond *sync.Cond
	used int
	max  int
}

func newByteBudget(max int) *byteBudget {
	b := &byteBudget{max: max}
	b.cond = sync.NewCond(&b.mu)
	return b
}

// take waits until n more bytes fit (a line larger than the whole budget
// waits until nothing else is held).
func (b *byteBudget) take(n int) {
	b.mu.Lock()
	for b.used > 0 && b.used+n > b.max {
		b.cond.Wait()
	}
	b.used += n
	b.mu.Unlock()
}

func (b *byteBudget) give(n int) {
	b.mu.Lock()
	b.used -= n
	b.mu.Unlock()
	b.cond.Broadcast()
}

// bulk reads src line by line and enqueues the valid lines in batches over
// f.concurrency lanes. An organization's lines always go to the same lane, so
// they are enqueued (and applied) in file order. Memory stays flat: one line
// buffer, and per lane one batch in the making and one in flight. The first
// Redis failure stops the run (the rest would fail the same way); the lines
// it leaves behind count as failed.
func (a *app) bulk(ctx context.Context, src io.Reader, f bulkFlags) (bulkSummary, error) {
	start := time.Now()
	var sum bulkSummary
	var enqueued, duplicates, failed atomic.Int64
	if a.env("GOMEMLIMIT") == "" {
		defer debug.SetMemoryLimit(debug.SetMemoryLimit(bulkMemoryLimit))
	}

	wctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	var opts []tasks.EnqueueOption
	if f.run != "" {
		opts = append(opts, tasks.InRun(f.run))
	}
	if f.maxRetry > 0 {
		opts = append(opts, tasks.WithMaxRetry(f.maxRetry))
	}

	bar := a.startProgress(-1, "enqueue", "lines")
	lanes := make([]chan bulkJob, f.concurrency)
	var wg sync.WaitGroup
	var stopOnce sync.Once
	budget := newByteBudget(maxBulkBytes)
	send := func(batch []tasks.Line, size int) {
		defer budget.give(size)
		if wctx.Err() != nil {
			failed.Add(int64(len(batch))) // read, never sent: the run was stopped
			return
		}
		_, errs := a.producer.EnqueueLines(wctx, batch, opts...)
		for i, err := range errs {
			switch {
			case err == nil:
				enqueued.Add(1)
			case errors.Is(err, tasks.ErrDuplicate):
				duplicates.Add(1)
			default:
				failed.Add(1)
				stopOnce.Do(func() {
					a.logf("line %d: enqueue failed: %v", batch[i].No, err)
					a.logf("stopping: the lines not yet enqueued are counted as failed; %s", resumeHint(f.run))
					cancel(err)
				})
			}
		}
	}
	for i := range lanes {
		lanes[i] = make(chan bulkJob, tasks.DefaultBatchSize)
		wg.Add(1)
		go func(jobs <-chan bulkJob) {
			defer wg.Done()
			batch := make([]tasks.Line, 0, tasks.DefaultBatchSize)
			for j := range jobs {
				batch = append(batch[:0], tasks.Line{No: int64(j.line), Update: j.u})
				size := len(j.u.Body)
				// Take what else is already waiting, up to a batch: a fast
				// reader fills batches, a slow one is not held back.
			more:
				for len(batch) < tasks.DefaultBatchSize && size < maxBatchBytes {
					select {
					case j, ok := <-jobs:
						if !ok {
							break more
						}
						batch = append(batch, tasks.Line{No: int64(j.line), Update: j.u})
						size += len(j.u.Body)
					default:
						break more
					}
				}
				send(batch, size)
			}
		}(lanes[i])
	}

	readErr := a.readLines(wctx, src, f.run, &sum, &failed, bar, lanes, budget)
	for _, l := range lanes {
		close(l)
	}
	wg.Wait()
	a.finishProgress(bar)

	sum.Run = f.run
	sum.Enqueued, sum.Duplicates, sum.Failed = enqueued.Load(), duplicates.Load(), failed.Load()
	sum.Seconds = time.Since(start).Seconds()
	if sum.Seconds > 0 {
		sum.PerSecond = float64(sum.Read) / sum.Seconds
	}
	if readErr != nil {
		return sum, fmt.Errorf("bulk: reading stopped after %d lines: %w; %s", sum.Read, readErr, resumeHint(f.run))
	}
	if err := context.Cause(ctx); err != nil {
		return sum, fmt.Errorf("bulk: interrupted after %d lines: %w; %s", sum.Read, err, resumeHint(f.run))
	}
	return sum, nil
}

// laneOf is the lane of an organization: always the same one.
func laneOf(u tasks.Update, lanes int) int {
	h := fnv.New32a()
	h.Write([]byte(u.IntegratedAccountID))
	h.Write([]byte{0})
	h.Write([]byte(u.ID))
	return int(h.Sum32() % uint32(lanes))
}

// sealRun seals run name once every line of its file is in, so that it is
// done once its updates have ended. It reports whether the run exists.
func (a *app) sealRun(ctx context.Context, name string) (bool, error) {
	err := a.store.Runs().Seal(ctx, name)
	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, tasks.ErrNotFound):
		a.logf("run %s has no line: the file had no valid line, so the run was not created", name)
		return false, nil
	}
	return false, fmt.Errorf("bulk: every line is in, but run %s could not be sealed: %w; "+
		"run the same file again with the same --run %s (nothing is enqueued twice) to seal it", name, err, name)
}

// resumeHint tells the user how to finish a run that stopped half-way.
func resumeHint(run string) string {
	if run != "" {
		return fmt.Sprintf("re-run with the same --run %s to finish without enqueuing anything twice "+
			"(until then run %s stays open: never done)", run, run)
	}
	return "lines without idempotency_key got random keys, so re-running the file enqueues them again; use --run NAME next time"
}

// readLines parses src line by line, reports invalid lines and sends the
// valid ones to jobs, until EOF or until ctx is done.
func (a *app) readLines(ctx context.Context, src io.Reader, run string, sum *bulkSummary, failed *atomic.Int64, bar *progress, lanes []chan bulkJob, budget *byteBudget) error {
	br := bufio.NewReaderSize(src, 64<<10)
	var buf []byte
	for lineNo := 1; ; lineNo++ {
		line, tooLong, err := readLine(br, buf[:0], maxLineBytes)
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		if !tooLong {
			buf = line // reuse the buffer: ParseUpdate copies what it keeps
		}
		if !tooLong && len(bytes.TrimSpace(line)) == 0 {
			continue
		}
		sum.Read++
		bar.add(1)
		if tooLong {
			sum.Invalid++
			a.logf("line %d: longer than %d bytes (the body limit is %d); skipped", lineNo, maxLineBytes, tasks.MaxBodyBytes)
			continue
		}
		u, err := tasks.ParseUpdate(line)
		if err != nil {
			sum.Invalid++
			a.logf("line %d: %v", lineNo, err)
			continue
		}
		if u.IdempotencyKey == "" && run != "" {
			u.IdempotencyKey = tasks.RunKey(run, lineNo, line)
		}
		budget.take(len(u.Body))
		select {
		case lanes[laneOf(u, len(lanes))] <- bulkJob{line: lineNo, u: u}:
		case <-ctx.Done():
			failed.Add(1) // read, never sent: the run was stopped
			return nil
		}
	}
}

// readLine reads one line into buf, without its "\n" or "\r\n". A line longer
// than max is consumed to its end and reported tooLong, without being kept.
// err is io.EOF only when there is no line left.
func readLine(r *bufio.Reader, buf []byte, max int) (line []byte, tooLong bool, err error) {
	n := 0
	for {
		frag, err := r.ReadSlice('\n')
		n += len(frag)
		if !tooLong {
			if n > max+2 { // room for "\r\n"
				tooLong, buf = true, nil
			} else {
				buf = append(buf, frag...)
			}
		}
		switch {
		case errors.Is(err, bufio.ErrBufferFull):
			continue
		case errors.Is(err, io.EOF):
			if n == 0 {
				return nil, false, io.EOF
			}
		case err != nil:
			return nil, false, err
		}
		if tooLong {
			return nil, true, nil
		}
		buf = bytes.TrimSuffix(buf, []byte("\n"))
		buf = bytes.TrimSuffix(buf, []byte("\r"))
		if len(buf) > max {
			return nil, true, nil
		}
		return buf, false, nil
	}
}
