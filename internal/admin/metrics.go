package admin

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/hibiken/asynq"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/orgsync/orgsync/internal/circuit"
	"github.com/orgsync/orgsync/tasks"
)

// DefaultScrapeTimeout bounds the Redis reads one scrape makes (queue sizes,
// dead letters, holds, circuit state), so a slow Redis gives a partial scrape
// rather than a hung one.
const DefaultScrapeTimeout = 5 * time.Second

// CircuitReader is the part of the circuit breaker the metrics read.
type CircuitReader interface {
	State(ctx context.Context) (circuit.State, error)
}

// MetricsConfig says where the scrape-time gauges come from. Nil sources
// leave their metrics out.
type MetricsConfig struct {
	Store   *tasks.Store
	Circuit CircuitReader
	// Inspector reads queue sizes.
	Inspector *asynq.Inspector
	Queues    []string
	// ScrapeTimeout bounds each scrape's Redis reads (DefaultScrapeTimeout when 0).
	ScrapeTimeout time.Duration
	Logger        *slog.Logger
	// Now is the clock (tests); time.Now when nil.
	Now func() time.Time
}

// Metrics is the worker's Prometheus registry: counters fed by the handler's
// events and gauges read from Redis at scrape time. Label values are bounded
// (outcome, class, status, reason, queue, state, kind): no account or
// organization ever becomes a label.
type Metrics struct {
	cfg      MetricsConfig
	registry *prometheus.Registry

	updates      *prometheus.CounterVec
	attempts     *prometheus.CounterVec
	latency      prometheus.Histogram
	completion   prometheus.Histogram
	waits        *prometheus.CounterVec
	scrapeErrors *prometheus.CounterVec
}

// NewMetrics builds the registry.
func NewMetrics(cfg MetricsConfig) *Metrics {
	if cfg.ScrapeTimeout <= 0 {
		cfg.ScrapeTimeout = DefaultScrapeTimeout
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	// A queue named twice would be two identical series: a failed scrape.
	cfg.Queues = slices.Compact(slices.Sorted(slices.Values(cfg.Queues)))
	m := &Metrics{
		cfg:      cfg,
		registry: prometheus.NewRegistry(),
		updates: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "orgsync_updates_total",
			Help: "Handler runs by outcome (completed, retry, waiting, dead, stale) and class.",
		}, []string{"outcome", "class"}),
		attempts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "orgsync_attempts_total",
			Help: `Requests sent to Truto by HTTP status ("none": no HTTP answer, e.g. a connection error or timeout).`,
		}, []string{"status"}),
		latency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "orgsync_upstream_latency_seconds",
			Help:    "Latency of the last request of each run that sent one.",
			Buckets: []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30},
		}),
		completion: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "orgsync_enqueue_to_completion_seconds",
			Help: "Time from enqueue to completion of completed updates.",
			Buckets: []float64{.1, .5, 1, 5, 15, 60, 300, 900, 3600, 4 * 3600, 24 * 3600,
				72 * 3600},
		}),
		waits: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "orgsync_waits_total",
			Help: "Runs that put their update back in admission without spending retry budget, by reason (rate_limited: a 429; account_attention: a 401 or blocked account; stopping; held: the account was held after the update was admitted; joined: queued before admission; ledger: Redis trouble). Waiting for a slot, a turn or the circuit costs no run and is not counted here.",
		}, []string{"reason"}),
		scrapeErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "orgsync_scrape_errors_total",
			Help: "Scrape-time reads that failed or timed out, by source; their metrics are missing from that scrape.",
		}, []string{"source"}),
	}
	m.registry.MustRegister(m.updates, m.attempts, m.latency, m.completion, m.waits, m.scrapeErrors,
		&stateCollector{m: m},
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// Registry returns the metrics' own registry (not Prometheus's global default).
func (m *Metrics) Registry() *prometheus.Registry { return m.registry }

// Handler serves the registry in Prometheus text format. A failed
// scrape-time read drops only its own metrics (and counts the failure), so
// one slow source never blanks the whole scrape.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.registry, promhttp.HandlerOpts{
		ErrorHandling:       promhttp.ContinueOnError,
		ErrorLog:            promLogger{m.cfg.Logger},
		MaxRequestsInFlight: 4,
		Timeout:             2 * m.cfg.ScrapeTimeout,
	})
}

// Observe counts one handler event. It never blocks: it is called on the
// handler's path.
func (m *Metrics) Observe(e tasks.Event) {
	class := e.Class
	if class == "" {
		class = "none"
	}
	outcome := e.Outcome
	if outcome == "" {
		outcome = "unknown"
	}
	m.updates.WithLabelValues(string(outcome), string(class)).Inc()
	if e.Outcome == tasks.OutcomeWaiting {
		m.waits.WithLabelValues(string(class)).Inc()
	}
	if e.Sent > 0 {
		// Only connection-level failures (no HTTP answer) are retried within
		// one run, so every request but the last had no status.
		if e.Sent > 1 {
			m.attempts.WithLabelValues("none").Add(float64(e.Sent - 1))
		}
		m.attempts.WithLabelValues(statusLabel(e.StatusCode)).Inc()
		if e.Latency > 0 {
			m.latency.Observe(e.Latency.Seconds())
		}
	}
	if e.Outcome == tasks.OutcomeCompleted && e.Class != tasks.ClassSkipped && !e.EnqueuedAt.IsZero() {
		m.completion.Observe(max(m.cfg.Now().Sub(e.EnqueuedAt), 0).Seconds())
	}
}

func statusLabel(code int) string {
	if code <= 0 || code > 999 {
		return "none"
	}
	return strconv.Itoa(code)
}

var (
	descCircuitOpen = prometheus.NewDesc("orgsync_circuit_open",
		"1 while the shared circuit breaker is open (updates wait, one probe per interval), else 0.", nil, nil)
	descQueueTasks = prometheus.NewDesc("orgsync_queue_tasks",
		"asynq tasks per served queue and state (pending, active, scheduled, retry, archived, completed, aggregating).",
		[]string{"queue", "state"}, nil)
	descQueueLatency = prometheus.NewDesc("orgsync_queue_oldest_pending_seconds",
		"How long the oldest pending task of a served queue has waited.", []string{"queue"}, nil)
	descQueuePaused = prometheus.NewDesc("orgsync_queue_paused",
		"1 while a served queue is paused, else 0.", []string{"queue"}, nil)
	descDeadLetters = prometheus.NewDesc("orgsync_dead_letters",
		"Dead letters in orgsync's own store (never trimmed, unlike asynq's archive).", nil, nil)
	descHolds = prometheus.NewDesc("orgsync_account_holds",
		"Integrated accounts whose updates wait, by kind (parked, rate_limited).", []string{"kind"}, nil)
	descAdmission = prometheus.NewDesc("orgsync_admission",
		"Admission as a whole: accounts scheduled to send (scheduled_accounts), updates handed to the queue and not yet started (admitted), updates a worker runs (running), parked accounts (parked_accounts), 1 while every account is parked (all_parked), and its shards (shards).",
		[]string{"what"}, nil)
	descRuns = prometheus.NewDesc("orgsync_runs",
		"Runs kept (as long as results), by state: done (sealed, every update ended) or open (lines still coming, or updates not yet ended).",
		[]string{"state"}, nil)
	descOutcomeEvents = prometheus.NewDesc("orgsync_outcome_events",
		"Entries in the outcome event stream (capped at about --events-max-len; 0 while events are off).", nil, nil)
)

// stateCollector reads the gauges from Redis at scrape time, each source
// bounded by the scrape timeout.
type stateCollector struct{ m *Metrics }

func (c *stateCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descCircuitOpen, descQueueTasks, descQueueLatency, descQueuePaused, descDeadLetters, descHolds, descAdmission,
		descRuns, descOutcomeEvents} {
		ch <- d
	}
}

func (c *stateCollector) Collect(ch chan<- prometheus.Metric) {
	m := c.m
	ctx, cancel := context.WithTimeout(context.Background(), m.cfg.ScrapeTimeout)
	defer cancel()
	var wg sync.WaitGroup
	run := func(source string, fn func(ctx context.Context) ([]prometheus.Metric, error)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			out, err := withTimeout(ctx, fn)
			if err != nil {
				m.scrapeErrors.WithLabelValues(source).Inc()
				m.cfg.Logger.Warn("metrics: scrape-time read failed; its metrics are left out of this scrape",
					"source", source, "error", err.Error())
				return
			}
			for _, x := range out {
				ch <- x
			}
		}()
	}
	if m.cfg.Circuit != nil {
		run("circuit", func(ctx context.Context) ([]prometheus.Metric, error) {
			st, err := m.cfg.Circuit.State(ctx)
			if err != nil {
				return nil, err
			}
			return []prometheus.Metric{prometheus.MustNewConstMetric(descCircuitOpen, prometheus.GaugeValue, boolValue(st.Open))}, nil
		})
	}
	if m.cfg.Store != nil {
		run("admission", func(ctx context.Context) ([]prometheus.Metric, error) {
			st, err := m.cfg.Store.Scheduler().Stats(ctx)
			if err != nil {
				return nil, err
			}
			gauge := func(what string, v float64) prometheus.Metric {
				return prometheus.MustNewConstMetric(descAdmission, prometheus.GaugeValue, v, what)
			}
			return []prometheus.Metric{gauge("scheduled_accounts", float64(st.Scheduled)), gauge("admitted", float64(st.Admitted)),
				gauge("running", float64(st.Running)), gauge("parked_accounts", float64(st.Parked)),
				gauge("all_parked", boolValue(st.AllParked != "")), gauge("shards", float64(st.Shards))}, nil
		})
		run("dead_letters", func(ctx context.Context) ([]prometheus.Metric, error) {
			n, err := m.cfg.Store.DeadLetters().Count(ctx)
			if err != nil {
				return nil, err
			}
			return []prometheus.Metric{prometheus.MustNewConstMetric(descDeadLetters, prometheus.GaugeValue, float64(n))}, nil
		})
		run("holds", func(ctx context.Context) ([]prometheus.Metric, error) {
			holds, err := m.cfg.Store.Accounts().Holds(ctx)
			if err != nil {
				return nil, err
			}
			byKind := map[string]int{tasks.HoldParked: 0, tasks.HoldRateLimited: 0}
			for _, h := range holds {
				if _, known := byKind[h.Kind]; known {
					byKind[h.Kind]++
				}
			}
			var out []prometheus.Metric
			for kind, n := range byKind {
				out = append(out, prometheus.MustNewConstMetric(descHolds, prometheus.GaugeValue, float64(n), kind))
			}
			return out, nil
		})
		run("runs", func(ctx context.Context) ([]prometheus.Metric, error) {
			runs, err := m.cfg.Store.Runs().List(ctx)
			if err != nil {
				return nil, err
			}
			var done, open float64
			for _, r := range runs {
				if r.Done {
					done++
				} else {
					open++
				}
			}
			return []prometheus.Metric{prometheus.MustNewConstMetric(descRuns, prometheus.GaugeValue, open, "open"),
				prometheus.MustNewConstMetric(descRuns, prometheus.GaugeValue, done, "done")}, nil
		})
		run("outcome_events", func(ctx context.Context) ([]prometheus.Metric, error) {
			n, err := m.cfg.Store.Events().Count(ctx)
			if err != nil {
				return nil, err
			}
			return []prometheus.Metric{prometheus.MustNewConstMetric(descOutcomeEvents, prometheus.GaugeValue, float64(n))}, nil
		})
	}
	if m.cfg.Inspector != nil {
		run("queues", func(context.Context) ([]prometheus.Metric, error) { return queueMetrics(m.cfg.Inspector, m.cfg.Queues) })
	}
	wg.Wait()
}

// queueMetrics reads the served queues' sizes. A queue nothing was ever
// enqueued to does not exist in asynq yet: it reports zeros.
func queueMetrics(ins *asynq.Inspector, queues []string) ([]prometheus.Metric, error) {
	known, err := ins.Queues()
	if err != nil {
		return nil, fmt.Errorf("list queues: %w", err)
	}
	var out []prometheus.Metric
	for _, q := range queues {
		info := &asynq.QueueInfo{Queue: q}
		if slices.Contains(known, q) {
			if info, err = ins.GetQueueInfo(q); err != nil {
				return nil, fmt.Errorf("queue %s: %w", q, err)
			}
		}
		gauge := func(state string, n int) prometheus.Metric {
			return prometheus.MustNewConstMetric(descQueueTasks, prometheus.GaugeValue, float64(n), q, state)
		}
		out = append(out,
			gauge("pending", info.Pending), gauge("active", info.Active), gauge("scheduled", info.Scheduled),
			gauge("retry", info.Retry), gauge("archived", info.Archived), gauge("completed", info.Completed),
			gauge("aggregating", info.Aggregating),
			prometheus.MustNewConstMetric(descQueueLatency, prometheus.GaugeValue, info.Latency.Seconds(), q),
			prometheus.MustNewConstMetric(descQueuePaused, prometheus.GaugeValue, boolValue(info.Paused), q))
	}
	return out, nil
}

// withTimeout runs fn and gives up waiting for it when ctx ends: asynq's
// Inspector takes no context, so its calls cannot be cancelled, only
// abandoned (they end on the Redis client's own timeouts).
func withTimeout[T any](ctx context.Context, fn func(context.Context) (T, error)) (T, error) {
	type result struct {
		v   T
		err error
	}
	ch := make(chan result, 1)
	go func() {
		v, err := fn(ctx)
		ch <- result{v, err}
	}()
	select {
	case r := <-ch:
		return r.v, r.err
	case <-ctx.Done():
		var zero T
		return zero, fmt.Errorf("scrape timeout: %w", ctx.Err())
	}
}

func boolValue(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// promLogger sends promhttp's error lines through slog.
type promLogger struct{ l *slog.Logger }

func (p promLogger) Println(v ...any) { p.l.Warn(fmt.Sprint(v...), "component", "metrics") }
