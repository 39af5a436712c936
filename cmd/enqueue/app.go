package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/schollz/progressbar/v3"
	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/orgsync/orgsync/internal/redisconn"
	"github.com/orgsync/orgsync/tasks"
)

// Exit codes, as README.md "Exit codes" fixes them (docs/design.md "Interfaces").
const (
	exitOK      = 0
	exitRefused = 1 // some input was refused
	exitUsage   = 2 // usage or connection error
)

// pingTimeout bounds the connection check at start.
const pingTimeout = 5 * time.Second

// exitError carries the exit code an error should end the program with. A nil
// err means the command already told the user everything on stderr.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string {
	if e.err == nil {
		return ""
	}
	return e.err.Error()
}

func (e *exitError) Unwrap() error { return e.err }

// refused is an error for input the program will not accept (exit 1).
func refused(format string, args ...any) error {
	return &exitError{code: exitRefused, err: fmt.Errorf(format, args...)}
}

// usageError is an error in how the program was called (exit 2).
func usageError(format string, args ...any) error {
	return &exitError{code: exitUsage, err: fmt.Errorf(format, args...)}
}

// countingWriter remembers whether anything reached stdout, so that a failure
// before any output can still leave valid JSON there.
type countingWriter struct {
	w io.Writer
	n int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

// app is one invocation of the CLI: its streams, global flags and the Redis
// connection, opened by the commands that need it.
type app struct {
	stdin     io.Reader
	stdout    *countingWriter
	stderr    io.Writer
	errMu     sync.Mutex               // serialises human messages from concurrent workers
	bar       *progressbar.ProgressBar // the running progress bar, cleared before a message
	env       func(string) string
	now       func() time.Time
	stdoutTTY bool
	stderrTTY bool

	redisURL  string
	queue     string
	resultTTL time.Duration
	// eventsMaxLen caps the outcome stream when this command writes to it
	// (a run sealed, replayed or purged into being done); -1 until set.
	eventsMaxLen int64

	rdb      redis.UniversalClient
	store    *tasks.Store
	producer *tasks.Producer
}

func run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer, env func(string) string) int {
	return newApp(stdin, stdout, stderr, env).execute(ctx, args)
}

func newApp(stdin io.Reader, stdout, stderr io.Writer, env func(string) string) *app {
	if env == nil {
		env = func(string) string { return "" }
	}
	return &app{
		stdin:        stdin,
		stdout:       &countingWriter{w: stdout},
		stderr:       stderr,
		env:          env,
		now:          time.Now,
		stdoutTTY:    isTerminal(stdout),
		stderrTTY:    isTerminal(stderr),
		queue:        tasks.DefaultQueue,
		resultTTL:    tasks.DefaultResultTTL,
		eventsMaxLen: -1,
	}
}

// isTerminal reports whether w is a terminal; pipes and buffers are not.
func isTerminal(w any) bool {
	f, ok := w.(interface{ Fd() uintptr })
	return ok && term.IsTerminal(int(f.Fd()))
}

// execute runs the command line and turns its outcome into an exit code.
func (a *app) execute(ctx context.Context, args []string) int {
	root := a.rootCmd()
	root.SetArgs(args)
	root.SetIn(a.stdin)
	// Help and usage are for humans: stderr, so stdout stays JSON only.
	root.SetOut(a.stderr)
	root.SetErr(a.stderr)
	err := root.ExecuteContext(ctx)
	a.close()
	if err == nil {
		return exitOK
	}
	code := exitUsage // cobra's own errors (unknown command or flag) are usage errors
	var ee *exitError
	if errors.As(err, &ee) {
		code = ee.code
	}
	msg := err.Error()
	if msg != "" {
		a.logf("enqueue: %s", msg)
	}
	if a.stdout.n == 0 {
		// Programs reading stdout still get one JSON object saying what failed.
		_ = a.writeJSON(struct {
			Error    string `json:"error"`
			ExitCode int    `json:"exit_code"`
		}{msg, code})
	}
	return code
}

func (a *app) rootCmd() *cobra.Command {
	root := &cobra.Command{
		Use:   "enqueue",
		Short: "Enqueue organization updates for orgsync and operate its queue",
		Long: "enqueue puts organization updates on orgsync's Redis queue and lets operators inspect\n" +
			"and repair it. stdout is JSON for programs; stderr is for humans.\n" +
			"Exit codes: 0 success, 1 some input refused, 2 usage or connection error.",
		SilenceErrors: true,
		SilenceUsage:  true,
		RunE:          groupRunE,
	}
	pf := root.PersistentFlags()
	pf.StringVar(&a.redisURL, "redis-url", "", "Redis to use (default $REDIS_URL, else "+redisconn.DefaultURL+"); forms: "+redisconn.Forms)
	pf.StringVar(&a.queue, "queue", tasks.DefaultQueue, "asynq queue of the updates")
	pf.DurationVar(&a.resultTTL, "result-ttl", tasks.DefaultResultTTL, "how long results and the idempotency ledger are kept")
	pf.Int64Var(&a.eventsMaxLen, "events-max-len", -1, fmt.Sprintf("about how many outcome events the stream keeps when this command writes one (default $ORGSYNC_EVENTS_MAX_LEN, else %d; 0 writes none): give the workers' --events-max-len", tasks.DefaultEventsMaxLen))
	// The completion command would write shell code to stdout, which is for JSON.
	root.CompletionOptions.DisableDefaultCmd = true
	root.SetFlagErrorFunc(func(c *cobra.Command, err error) error {
		return usageError("%w (see `%s --help`)", err, c.CommandPath())
	})
	root.AddCommand(a.updateCmd(), a.bulkCmd(), a.statusCmd(), a.dlqCmd(), a.accountsCmd(), a.statsCmd(), a.queueCmd(),
		a.runsCmd(), a.eventsCmd())
	return root
}

// groupRunE answers a command that only groups subcommands, called bare or
// with an unknown subcommand.
func groupRunE(c *cobra.Command, args []string) error {
	var names []string
	for _, sub := range c.Commands() {
		if sub.IsAvailableCommand() {
			names = append(names, sub.Name())
		}
	}
	if len(args) > 0 {
		return usageError("unknown command %q for %q; use one of: %s", args[0], c.CommandPath(), strings.Join(names, ", "))
	}
	return usageError("%q needs a command: one of %s (see `%s --help`)", c.CommandPath(), strings.Join(names, ", "), c.CommandPath())
}

// connect opens Redis (flag, else REDIS_URL, else the default) and builds the
// store and producer. Commands call it after checking their arguments, so a
// usage error never waits on a connection.
func (a *app) connect(ctx context.Context) error {
	if a.queue == "" {
		return usageError("--queue is empty; give a queue name or leave the flag out for %q", tasks.DefaultQueue)
	}
	if a.resultTTL <= 0 {
		return usageError("--result-ttl %s must be positive, e.g. 168h", a.resultTTL)
	}
	events := a.eventsMaxLen
	if events < -1 {
		return usageError("--events-max-len %d: expected a whole number >= 0 (0 writes no outcome events)", events)
	}
	if events < 0 {
		events = tasks.DefaultEventsMaxLen
		if v := a.env("ORGSYNC_EVENTS_MAX_LEN"); v != "" {
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil || n < 0 {
				return usageError("ORGSYNC_EVENTS_MAX_LEN=%q: expected a whole number >= 0 (0 writes no outcome events)", v)
			}
			events = n
		}
	}
	url, from := a.redisURL, "--redis-url"
	if url == "" {
		url, from = a.env("REDIS_URL"), "REDIS_URL"
	}
	if url == "" {
		url, from = redisconn.DefaultURL, "the default URL"
	}
	rdb, err := redisconn.Open(ctx, url, pingTimeout)
	if err != nil {
		return usageError("%w (the URL came from %s; pass --redis-url or set REDIS_URL to use another)", err, from)
	}
	a.rdb = rdb
	a.store = tasks.NewStore(rdb, tasks.WithResultTTL(a.resultTTL), tasks.WithClock(a.now), tasks.WithEventsMaxLen(events))
	a.producer = tasks.NewProducer(a.store, tasks.WithDefaultQueue(a.queue), tasks.WithProducerClock(a.now))
	// Dead letters a worker older than this command wrote in the single-slot
	// layout move to one record per update before the command looks for any
	// (a listing, a replay, an enqueue's duplicate check); a worker moves them
	// at its start too. Nothing to move costs one EXISTS.
	if n, err := a.store.DeadLetters().MigrateLegacy(ctx); err != nil {
		return usageError("%w (dead letters of an older worker's layout could not be moved; run the command again)", err)
	} else if n > 0 {
		a.logf("moved %d dead letters of an older worker's single-slot layout to one record per update", n)
	}
	return nil
}

func (a *app) close() {
	if a.producer != nil {
		_ = a.producer.Close()
	}
	if a.rdb != nil {
		_ = a.rdb.Close()
	}
}

// writeJSON writes v as one line of JSON on stdout.
func (a *app) writeJSON(v any) error {
	enc := json.NewEncoder(a.stdout)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return fmt.Errorf("write output: %w", err)
	}
	return nil
}

// logf writes one message line for humans on stderr.
func (a *app) logf(format string, args ...any) {
	a.errMu.Lock()
	defer a.errMu.Unlock()
	if a.bar != nil {
		_ = a.bar.Clear()
	}
	fmt.Fprintf(a.stderr, format+"\n", args...)
}
