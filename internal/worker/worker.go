package worker

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/orgsync/orgsync/internal/admin"
	"github.com/orgsync/orgsync/internal/admission"
	"github.com/orgsync/orgsync/internal/circuit"
	"github.com/orgsync/orgsync/internal/redisconn"
	"github.com/orgsync/orgsync/tasks"
	"github.com/orgsync/orgsync/trutoclient"
)

// Worker is one orgsync worker process's machinery.
type Worker struct {
	cfg      Config
	rdb      redis.UniversalClient
	ownsRDB  bool
	store    *tasks.Store
	handler  *tasks.Handler
	breaker  *circuit.Breaker
	leases   *admission.Leases
	admitter *admission.Admitter
	client   *asynq.Client
	server   *asynq.Server
	logger   *slog.Logger
	adminLn  net.Listener
	admin    *admin.Server
	metrics  *admin.Metrics // nil when the admin endpoint is disabled
	ui       io.Closer      // the queue UI's own Redis connections; nil without a UI
	started  atomic.Bool
	redisErr atomic.Pointer[string]
}

// Option adjusts how New builds a Worker.
type Option func(*options)

type options struct {
	rdb      redis.UniversalClient
	sender   tasks.Sender
	logger   *slog.Logger
	observer func(tasks.Event)
}

// WithRedis uses an existing Redis client (the demo's embedded Redis) instead of dialing REDIS_URL.
func WithRedis(rdb redis.UniversalClient) Option { return func(o *options) { o.rdb = rdb } }

// WithSender replaces the Truto client (tests).
func WithSender(s tasks.Sender) Option { return func(o *options) { o.sender = s } }

// WithLogger sets the structured logger (default: JSON on stderr at the configured level).
func WithLogger(l *slog.Logger) Option { return func(o *options) { o.logger = l } }

// WithObserver receives every handler Event (progress displays, metrics).
func WithObserver(fn func(tasks.Event)) Option { return func(o *options) { o.observer = fn } }

// New builds a worker from cfg. It connects to Redis (failing with a clear
// message if it cannot) but starts nothing; Run does.
func New(ctx context.Context, cfg Config, opts ...Option) (*Worker, error) {
	o := options{}
	for _, opt := range opts {
		opt(&o)
	}
	if o.logger == nil {
		o.logger = slog.Default()
	}
	w := &Worker{cfg: cfg, logger: o.logger, rdb: o.rdb}
	if w.rdb == nil {
		rdb, err := redisconn.Open(ctx, cfg.RedisURL, 5*time.Second)
		if err != nil {
			return nil, err
		}
		w.rdb, w.ownsRDB = rdb, true
	}
	w.rdb.AddHook(redisWatch{w})
	sched := admission.New(w.rdb, admission.Config{Account: cfg.AccountRate, Token: cfg.TokenRate,
		Headroom: cfg.RateHeadroom, MaxAdmitted: cfg.MaxAdmitted, Lease: cfg.Lease, AccountFailures: cfg.AccountFailures,
		Shards: cfg.Shards})
	if err := sched.Configure(ctx); err != nil {
		w.close()
		return nil, err
	}
	w.store = tasks.NewStore(w.rdb, tasks.WithResultTTL(cfg.ResultTTL), tasks.WithScheduler(sched),
		tasks.WithEventsMaxLen(eventsMaxLen(cfg.EventsMaxLen)))
	w.leases = admission.NewLeases(sched, processID())
	if n, err := w.store.Accounts().MigrateLegacyHolds(ctx); err != nil {
		w.logger.Warn("could not move account holds of the version before admission", "error", err.Error())
	} else if n > 0 {
		w.logger.Info("account holds of the version before admission moved into admission", "holds", n)
	}
	// Before any update runs: the handler and the producer look for a dead
	// letter in the per-update layout only.
	if n, err := w.store.DeadLetters().MigrateLegacy(ctx); err != nil {
		w.logger.Warn("could not move the dead letters of the single-slot layout; the next start (or enqueue command) tries again", "error", err.Error())
	} else if n > 0 {
		w.logger.Info("dead letters moved from the single-slot layout to one record per update", "dead_letters", n)
	}

	sender := o.sender
	if sender == nil {
		c, err := trutoclient.New(cfg.Token.Value(),
			trutoclient.WithBaseURL(cfg.BaseURL),
			trutoclient.WithTimeout(cfg.AttemptTimeout),
			trutoclient.WithMaxConnsPerHost(max(cfg.Concurrency, trutoclient.DefaultMaxConnsPerHost)))
		if err != nil {
			w.close()
			return nil, err
		}
		sender = c
	}
	w.breaker = circuit.New(w.rdb, cfg.Circuit)
	hopts := []tasks.HandlerOption{
		tasks.WithLogger(w.logger),
		tasks.WithBreaker(breaker{b: w.breaker, logger: w.logger, onClose: func(ctx context.Context) error {
			if _, err := sched.ClearFailures(ctx); err != nil {
				return err
			}
			return sched.Wake(ctx)
		}}),
		tasks.WithLeases(w.leases),
	}
	if cfg.AdminAddr != "" {
		w.metrics = admin.NewMetrics(admin.MetricsConfig{
			Store: w.store, Circuit: w.breaker, Inspector: asynq.NewInspectorFromRedisClient(w.rdb),
			Queues: cfg.QueueNames(), Logger: w.logger,
		})
	}
	if observe := w.observer(o.observer); observe != nil {
		hopts = append(hopts, tasks.WithObserver(observe))
	}
	w.handler = tasks.NewHandler(sender, w.store, cfg.Policy, hopts...)
	policy := w.handler.Policy()
	w.client = asynq.NewClientFromRedisClient(w.rdb)
	w.admitter = admission.NewAdmitter(sched, w.leases, tasks.Deliverer(w.client, 0), w.logger)
	w.admitter.SetGate(w.gate)

	w.server = asynq.NewServerFromRedisClient(w.rdb, asynq.Config{
		Concurrency:              cfg.Concurrency,
		Queues:                   cfg.QueuePriorities(),
		RetryDelayFunc:           policy.RetryDelay,
		IsFailure:                tasks.IsFailure,
		ShutdownTimeout:          cfg.ShutdownTimeout,
		TaskCheckInterval:        cfg.PollInterval,
		DelayedTaskCheckInterval: cfg.RetryPollInterval,
		Logger:                   asynqLogger{w.logger},
		LogLevel:                 asynqLevel(cfg.LogLevel),
		HealthCheckFunc:          w.healthCheck,
		HealthCheckInterval:      5 * time.Second,
	})
	if cfg.AdminAddr != "" {
		ln, err := net.Listen("tcp", cfg.AdminAddr)
		if err != nil {
			w.close()
			return nil, fmt.Errorf("--admin-addr (ORGSYNC_ADMIN_ADDR) %s: %w (another worker on this port? set a free address, or empty to disable)", cfg.AdminAddr, err)
		}
		w.adminLn = ln
		w.warnIfExposed()
		w.admin = admin.NewServer(ln, w.adminHandler(o.rdb != nil), cfg.AdminMaxConns, w.logger)
	}
	return w, nil
}

// eventsMaxLen is the outcome stream's cap for Config.EventsMaxLen: its zero
// is the default, a negative value no events.
func eventsMaxLen(n int64) int64 {
	switch {
	case n == 0:
		return tasks.DefaultEventsMaxLen
	case n < 0:
		return 0
	}
	return n
}

// Store returns the worker's record store.
func (w *Worker) Store() *tasks.Store { return w.store }

// AdminURL is the admin endpoint's base URL, or "" when disabled.
func (w *Worker) AdminURL() string {
	if w.adminLn == nil {
		return ""
	}
	return "http://" + w.adminLn.Addr().String()
}

// Run serves until ctx is done, then drains: in-flight updates get
// ShutdownTimeout to finish, after which asynq hands them back to the queue.
func (w *Worker) Run(ctx context.Context) error {
	defer w.close()
	mux := asynq.NewServeMux()
	mux.Handle(tasks.TypeUpdateOrganization, w.handler)
	if err := w.server.Start(mux); err != nil {
		return fmt.Errorf("start worker: %w", err)
	}
	w.started.Store(true)
	// Admission runs beside the asynq server; the leases outlive both, so
	// updates still running during the drain keep theirs.
	admitCtx, stopAdmitting := context.WithCancel(context.WithoutCancel(ctx))
	leaseCtx, stopLeases := context.WithCancel(context.WithoutCancel(ctx))
	defer stopLeases()
	go w.admitter.Run(admitCtx)
	go w.leases.Run(leaseCtx, w.logger)
	// The breaker's counted successes reach Redis until the drain is over.
	flushCtx, stopFlushing := context.WithCancel(context.WithoutCancel(ctx))
	flushed := make(chan struct{})
	go func() { w.breaker.Run(flushCtx); close(flushed) }()
	adminErr := make(chan error, 1)
	if w.admin != nil {
		go func() { adminErr <- w.admin.Serve() }()
	}
	w.logger.Info("worker started", "queues", w.cfg.Queues, "concurrency", w.cfg.Concurrency,
		"admin", w.AdminURL(), "base_url", w.cfg.BaseURL, "redis", redisconn.Redact(w.cfg.RedisURL))
	var err error
	select {
	case <-ctx.Done():
	case err = <-adminErr:
		err = fmt.Errorf("admin endpoint: %w", err)
	}
	w.logger.Info("stopping: draining in-flight updates", "timeout", w.cfg.ShutdownTimeout)
	w.started.Store(false)
	stopAdmitting()
	w.server.Shutdown()
	stopFlushing()
	<-flushed
	stopLeases()
	if w.admin != nil {
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		_ = w.admin.Shutdown(sctx)
		cancel()
	}
	w.logger.Info("worker stopped")
	return err
}

func (w *Worker) close() {
	if w.client != nil {
		_ = w.client.Close()
	}
	if w.adminLn != nil && w.admin == nil {
		_ = w.adminLn.Close()
	}
	if w.ui != nil {
		_ = w.ui.Close()
	}
	if w.ownsRDB && w.rdb != nil {
		_ = w.rdb.Close()
	}
}

// healthCheck is told of every Redis health check (asynq's, every 5 s) and
// every dial (redisWatch); it logs each change of Redis's reachability once.
func (w *Worker) healthCheck(err error) {
	if err == nil {
		if prev := w.redisErr.Swap(nil); prev != nil {
			w.logger.Info("Redis reachable again: updates resume", "after_error", *prev)
		}
		return
	}
	msg := err.Error()
	if w.redisErr.Swap(&msg) == nil {
		w.logger.Error("Redis unreachable: updates pause until it is back (nothing is lost: they stay in Redis)", "error", msg)
	}
}

// redisWatch reports every connection attempt to the worker's health state,
// so an outage shorter than asynq's 5-second health check is still logged.
type redisWatch struct{ w *Worker }

func (h redisWatch) DialHook(next redis.DialHook) redis.DialHook {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		conn, err := next(ctx, network, addr)
		h.w.healthCheck(err)
		return conn, err
	}
}

func (h redisWatch) ProcessHook(next redis.ProcessHook) redis.ProcessHook { return next }

func (h redisWatch) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}

// RedisLogger sends go-redis's own log lines (connection pool trouble) through
// slog, so that the worker's stderr stays JSON, at most one line a second
// (a dead Redis makes go-redis log every failed dial). Install it with
// redis.SetLogger(&worker.RedisLogger{L: logger}).
type RedisLogger struct {
	L    *slog.Logger
	last atomic.Int64 // unix nanoseconds of the last line written
}

// Printf logs one go-redis line at warn level, dropping lines within a second of the last.
func (r *RedisLogger) Printf(_ context.Context, format string, v ...any) {
	now := time.Now().UnixNano()
	if last := r.last.Load(); now-last < int64(time.Second) || !r.last.CompareAndSwap(last, now) {
		return
	}
	r.L.Warn(fmt.Sprintf(format, v...), "component", "go-redis")
}

// observer combines the admin metrics with the caller's observer (nil when neither).
func (w *Worker) observer(user func(tasks.Event)) func(tasks.Event) {
	switch {
	case w.metrics == nil:
		return user
	case user == nil:
		return w.metrics.Observe
	}
	return func(e tasks.Event) {
		w.metrics.Observe(e)
		user(e)
	}
}

// Metrics returns the worker's metrics, or nil when the admin endpoint is disabled.
func (w *Worker) Metrics() *admin.Metrics { return w.metrics }

// adminHandler builds the admin endpoint (internal/admin, docs/admin.md).
// sharedRedis says the Redis client came from WithRedis: with no REDIS_URL
// to connect the queue UI's own clients to, the UI is left out.
func (w *Worker) adminHandler(sharedRedis bool) http.Handler {
	var ui http.Handler
	switch conn, err := redisconn.Parse(w.cfg.RedisURL); {
	case sharedRedis && w.cfg.RedisURL == "":
		w.logger.Info("queue UI (/ui/) left out: the worker was given a Redis client, not a REDIS_URL, and asynqmon needs a URL to connect to")
	case err != nil:
		w.logger.Warn("queue UI (/ui/) left out: REDIS_URL not understood", "error", err.Error())
	default:
		h, err := admin.NewUI(conn, w.cfg.AdminUIWritable)
		if err != nil {
			w.logger.Warn("queue UI (/ui/) left out", "error", err.Error())
			break
		}
		ui, w.ui = h, h
	}
	return admin.NewHandler(admin.Options{
		Store: w.store, Circuit: w.breaker, Queues: w.cfg.QueueNames(), Metrics: w.metrics, UI: ui,
		Token: w.cfg.AdminToken.Value(), AllowedHosts: w.cfg.AdminAllowedHosts, Ready: w.readiness, Logger: w.logger,
	})
}

// warnIfExposed logs, loudly, an admin endpoint that listens beyond loopback
// without a token: whoever reaches the address reads every update's
// payload, result and dead letter, and with a writable UI changes queues.
func (w *Worker) warnIfExposed() {
	addr, ok := w.adminLn.Addr().(*net.TCPAddr)
	if !ok || addr.IP.IsLoopback() || w.cfg.AdminToken.Value() != "" {
		return
	}
	msg := "ADMIN ENDPOINT OPEN BEYOND LOOPBACK WITHOUT A TOKEN: anyone who can reach it reads update payloads, results and dead letters"
	if w.cfg.AdminUIWritable {
		msg += ", and changes tasks and queues through the writable queue UI"
	}
	w.logger.Warn(msg, "admin_addr", addr.String(),
		"fix", "put a bearer token in a file and set --admin-token-file (ORGSYNC_ADMIN_TOKEN_FILE), or listen on loopback with --admin-addr 127.0.0.1:9464 (ORGSYNC_ADMIN_ADDR)")
}

// readiness lists what keeps the worker from serving: its handler not
// running, or Redis unreachable.
func (w *Worker) readiness(ctx context.Context) []string {
	var problems []string
	if !w.started.Load() {
		problems = append(problems, "handler not running")
	}
	if err := w.rdb.Ping(ctx).Err(); err != nil {
		problems = append(problems, "redis: "+err.Error())
	}
	return problems
}

// breaker reports answers to the shared circuit breaker and logs its turns.
type breaker struct {
	b       *circuit.Breaker
	logger  *slog.Logger
	onClose func(context.Context) error // wakes admission: the backlog may go
}

func (a breaker) Record(ctx context.Context, account string, failed, probe bool) error {
	opened, closed, err := a.b.Record(ctx, account, failed, probe)
	switch {
	case opened:
		a.logger.Warn("circuit opened: most requests to Truto are failing; nothing is admitted but one probe per interval (no retry budget spent)")
	case closed:
		a.logger.Info("circuit closed: a probe succeeded; admission resumes at full limit")
		if a.onClose != nil {
			_ = a.onClose(ctx)
		}
	}
	return err
}

// gate is admission's question to the circuit breaker before each pass.
func (w *Worker) gate(ctx context.Context) (allow, probe bool, wait time.Duration, err error) {
	d, err := w.breaker.Allow(ctx)
	if err != nil {
		return true, false, 0, err // Redis trouble: admission itself will fail and retry
	}
	// Ask again when the next probe may be due, not after an update's wait.
	return d.Allow, d.Probe, min(d.Wait, w.breaker.ProbeInterval()), nil
}

// processID names this process for admission's leases: unique per start.
func processID() string {
	host, _ := os.Hostname()
	return host + ":" + strconv.Itoa(os.Getpid()) + ":" + tasks.NewKey()[3:11]
}

// asynqLogger sends asynq's own log lines through slog.
type asynqLogger struct{ l *slog.Logger }

func (a asynqLogger) Debug(args ...any) { a.l.Debug(fmt.Sprint(args...), "component", "asynq") }
func (a asynqLogger) Info(args ...any)  { a.l.Info(fmt.Sprint(args...), "component", "asynq") }
func (a asynqLogger) Warn(args ...any) {
	msg := fmt.Sprint(args...)
	if strings.HasPrefix(msg, "revoke task id=") {
		return // an update handed back to admission: the handler's own outcome, not trouble
	}
	a.l.Warn(msg, "component", "asynq")
}
func (a asynqLogger) Error(args ...any) { a.l.Error(fmt.Sprint(args...), "component", "asynq") }

// Fatal logs at error level. asynq 0.26 never calls it from a running server;
// stopping the process is main's decision, not a logger's.
func (a asynqLogger) Fatal(args ...any) {
	a.l.Error(fmt.Sprint(args...), "component", "asynq", "fatal", true)
}

func asynqLevel(l string) asynq.LogLevel {
	switch l {
	case "debug":
		return asynq.DebugLevel
	case "warn":
		return asynq.WarnLevel
	case "error":
		return asynq.ErrorLevel
	}
	return asynq.InfoLevel
}

// NewLogger returns the worker's JSON logger on w at level.
func NewLogger(w interface{ Write([]byte) (int, error) }, level string) *slog.Logger {
	var lv slog.Level
	_ = lv.UnmarshalText([]byte(level))
	return slog.New(slog.NewJSONHandler(w, &slog.HandlerOptions{Level: lv}))
}
