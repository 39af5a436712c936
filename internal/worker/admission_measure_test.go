package worker

// Measurements of admission as the worker runs it: the real worker (New +
// Run) against a private redis-server and the in-process fake Truto, each
// scenario once. They report figures and never fail on a number; a run fails
// only when its work does not get done.
//
//	go test -run '^$' -bench 'Admission' -benchtime 1x -timeout 20m ./internal/worker/
//
// Always pass -benchtime 1x: each benchmark is one fixed scenario, not b.N
// repetitions of an operation.

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"path"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/orgsync/orgsync/internal/bench"
	"github.com/orgsync/orgsync/internal/ratelimit"
	"github.com/orgsync/orgsync/internal/redistest"
	"github.com/orgsync/orgsync/tasks"
	"github.com/orgsync/orgsync/trutoclient/trutotest"
)

// hit is one PATCH as the fake saw it: when it arrived, when its answer was
// decided and written, and the status (0: dropped without an answer).
type hit struct {
	account, org      string
	arrived, answered time.Time
	status            int
}

// timedFake is the fake Truto behind a recorder of every PATCH's arrival and
// answer times (the fake's own records keep only the arrival).
type timedFake struct {
	*trutotest.Fake
	URL  string
	srv  *httptest.Server
	mu   sync.Mutex
	hits []hit
}

func newTimedFake(b *testing.B, faults trutotest.Faults) *timedFake {
	b.Helper()
	f := &timedFake{Fake: trutotest.New(testToken, trutotest.WithFaults(faults), trutotest.WithMaxRecorded(0), trutotest.WithSeed(1))}
	f.srv = httptest.NewServer(http.HandlerFunc(f.serve))
	f.URL = f.srv.URL
	b.Cleanup(func() {
		f.Shutdown()
		f.srv.CloseClientConnections()
		f.srv.Close()
	})
	return f
}

// statusWriter notes the status written; Unwrap lets the fake hijack the
// connection to drop it.
type statusWriter struct {
	http.ResponseWriter
	status int
}

func (w *statusWriter) WriteHeader(code int) {
	w.status = code
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

func (f *timedFake) serve(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPatch {
		f.Fake.ServeHTTP(w, r)
		return
	}
	h := hit{arrived: time.Now(), account: r.URL.Query().Get("integrated_account_id"), org: path.Base(r.URL.Path)}
	sw := &statusWriter{ResponseWriter: w}
	f.Fake.ServeHTTP(sw, r)
	h.answered, h.status = time.Now(), sw.status
	f.mu.Lock()
	f.hits = append(f.hits, h)
	f.mu.Unlock()
}

// snapshot returns the hits so far, in the order their answers were written.
func (f *timedFake) snapshot() []hit {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.hits)
}

// count returns how many hits so far match keep.
func (f *timedFake) count(keep func(hit) bool) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := 0
	for _, h := range f.hits {
		if keep(h) {
			n++
		}
	}
	return n
}

// waitHits waits until want hits match keep, failing the run if the count
// stops moving for stall.
func (f *timedFake) waitHits(b *testing.B, want int, keep func(hit) bool, stall time.Duration) {
	b.Helper()
	last, lastMove := -1, time.Now()
	for {
		got := f.count(keep)
		if got >= want {
			return
		}
		if got != last {
			last, lastMove = got, time.Now()
		} else if time.Since(lastMove) > stall {
			b.Fatalf("stalled for %s at %d of %d requests (fake stats %+v)", stall, got, want, f.Stats())
		}
		time.Sleep(2 * time.Millisecond) // polling the fake's count
	}
}

func applied(h hit) bool { return h.status == http.StatusOK }

// prodConfig is the worker's configuration with every production default
// (LoadConfig with no settings), pointed at the private Redis and the fake,
// without the admin endpoint, logging only errors.
func prodConfig(b *testing.B, redisURL, baseURL string) Config {
	b.Helper()
	lookup := func(k string) (string, bool) {
		if k == "TRUTO_API_TOKEN" {
			return testToken, true
		}
		return "", false
	}
	cfg, err := LoadConfig([]string{"--redis-url", redisURL, "--base-url", baseURL, "--admin-addr=", "--log-level", "error"}, lookup, io.Discard)
	if err != nil {
		b.Fatalf("LoadConfig: %v", err)
	}
	return cfg
}

// runWorker starts a worker on cfg (its own Redis connections, as a process
// has) and stops it when the benchmark ends. observe may be nil.
func runWorker(b *testing.B, cfg Config, observe func(tasks.Event)) *Worker {
	b.Helper()
	opts := []Option{WithLogger(NewLogger(io.Discard, "error"))}
	if observe != nil {
		opts = append(opts, WithObserver(observe))
	}
	w, err := New(context.Background(), cfg, opts...)
	if err != nil {
		b.Fatalf("worker.New: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	b.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			b.Errorf("worker.Run: %v", err)
		}
	})
	return w
}

// newProducer is a producer on its own connection to the private Redis.
func newProducer(b *testing.B, rdb *redis.Client) *tasks.Producer {
	b.Helper()
	p := tasks.NewProducer(tasks.NewStore(rdb, tasks.WithResultTTL(tasks.DefaultResultTTL)))
	b.Cleanup(func() { _ = p.Close() })
	return p
}

// measureUpdate is an update of account to its own organization n.
func measureUpdate(account string, n int) tasks.Update {
	return tasks.Update{
		ID:                  fmt.Sprintf("org-%s-%07d", account, n),
		IntegratedAccountID: account,
		IdempotencyKey:      fmt.Sprintf("m-%07d", n),
		Body:                json.RawMessage(fmt.Sprintf(`{"seq":%d}`, n)),
	}
}

// enqueueChunks enqueues n updates made by mk with EnqueueMany, chunk at a
// time, failing on any error, and returns how long it took.
func enqueueChunks(b *testing.B, p *tasks.Producer, n, chunk int, mk func(i int) tasks.Update) time.Duration {
	b.Helper()
	start := time.Now()
	for lo := 0; lo < n; lo += chunk {
		us := make([]tasks.Update, 0, chunk)
		for i := lo; i < min(lo+chunk, n); i++ {
			us = append(us, mk(i))
		}
		_, errs := p.EnqueueMany(context.Background(), us)
		for i, err := range errs {
			if err != nil {
				b.Fatalf("enqueue update %d: %v", lo+i, err)
			}
		}
	}
	return time.Since(start)
}

// redisCalls is the total of Redis's command counts (INFO commandstats),
// commands run inside scripts included, INFO itself left out.
func redisCalls(b *testing.B, rdb *redis.Client) int64 {
	b.Helper()
	var total int64
	for _, v := range redisCallsBy(b, rdb) {
		total += v
	}
	return total
}

// redisCallsBy is Redis's count of calls per command (bench.Calls).
func redisCallsBy(b *testing.B, rdb *redis.Client) map[string]int64 {
	b.Helper()
	out, err := bench.Calls(context.Background(), rdb)
	if err != nil {
		b.Fatal(err)
	}
	return out
}

// topCalls lists the commands that grew most from before to after, with
// their count per update.
func topCalls(before, after map[string]int64, per float64, k int) string {
	type c struct {
		name string
		n    int64
	}
	var cs []c
	for name, v := range after {
		if d := v - before[name]; d > 0 {
			cs = append(cs, c{name, d})
		}
	}
	slices.SortFunc(cs, func(x, y c) int { return int(y.n - x.n) })
	var parts []string
	for _, x := range cs[:min(k, len(cs))] {
		parts = append(parts, fmt.Sprintf("%s %.1f", x.name, float64(x.n)/per))
	}
	return strings.Join(parts, ", ")
}

// cpuTime is this process's user and system CPU time so far.
func cpuTime(b *testing.B) time.Duration {
	b.Helper()
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatalf("getrusage: %v", err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// idleCost measures Redis commands per second and this process's CPU
// seconds per second over d.
func idleCost(b *testing.B, rdb *redis.Client, d time.Duration) (cmdsPerSec, cpuPerSec float64) {
	b.Helper()
	c0, u0, t0 := redisCalls(b, rdb), cpuTime(b), time.Now()
	time.Sleep(d) // the measurement window
	c1, u1, el := redisCalls(b, rdb), cpuTime(b), time.Since(t0)
	return float64(c1-c0) / el.Seconds(), (u1 - u0).Seconds() / el.Seconds()
}

// BenchmarkAdmissionBacklog: one account's backlog of 100,000 updates, then
// 10 accounts with 20 updates each, every account limited to 10/s (in the
// worker and at the fake), the token unlimited, 1 ms upstream latency. The
// figure is the seconds from the start of the 200 small updates' enqueue
// until the fake has applied all of them; their own limit allows 1.9 s
// (19 intervals of 100 ms), 2.0 s with the default 5 % headroom.
func BenchmarkAdmissionBacklog(b *testing.B) {
	// 50,000 rather than 100,000: enqueuing 100,000 through the producer
	// takes about 90 s on two shared cores; admission's work per admit does
	// not grow with the lane (its sets are ordered: O(log n)).
	const backlog, small, perSmall = 50_000, 10, 20
	srv := redistest.Start(b)
	rdb := srv.Client()
	lim := trutotest.Limit{Requests: 10, Window: trutotest.Duration(time.Second)}
	fake := newTimedFake(b, trutotest.Faults{Latency: trutotest.Duration(time.Millisecond), AccountLimit: lim})
	cfg := prodConfig(b, srv.URL(), fake.URL)
	cfg.AccountRate, cfg.TokenRate = ratelimit.Limit{Requests: 10, Window: time.Second}, ratelimit.Limit{}
	runWorker(b, cfg, nil)
	p := newProducer(b, rdb)

	bigTook := enqueueChunks(b, p, backlog, 5000, func(i int) tasks.Update { return measureUpdate("acct-big", i) })
	isSmall := func(h hit) bool { return strings.HasPrefix(h.account, "acct-small-") }
	b.ResetTimer()
	start := time.Now()
	enqTook := enqueueChunks(b, p, small*perSmall, small*perSmall, func(i int) tasks.Update {
		return measureUpdate(fmt.Sprintf("acct-small-%02d", i%small), i)
	})
	fake.waitHits(b, small*perSmall, func(h hit) bool { return isSmall(h) && applied(h) }, 30*time.Second)
	b.StopTimer()
	var last time.Time
	limited, bigApplied := 0, 0
	firstOf, lastOf := map[string]time.Time{}, map[string]time.Time{}
	for _, h := range fake.snapshot() {
		if isSmall(h) && applied(h) {
			if f, ok := firstOf[h.account]; !ok || h.arrived.Before(f) {
				firstOf[h.account] = h.arrived
			}
			if h.arrived.After(lastOf[h.account]) {
				lastOf[h.account] = h.arrived
			}
		}
		switch {
		case isSmall(h) && applied(h) && h.answered.After(last):
			last = h.answered
		case isSmall(h) && h.status == http.StatusTooManyRequests:
			limited++
		case h.account == "acct-big" && applied(h):
			bigApplied++
		}
	}
	took := last.Sub(start).Seconds()
	var spacing time.Duration
	for a, f := range firstOf {
		spacing += lastOf[a].Sub(f)
	}
	spacing /= time.Duration(len(firstOf) * (perSmall - 1))
	b.ReportMetric(took, "s-for-the-200")
	b.ReportMetric(float64(spacing.Microseconds())/1000, "small-spacing-ms")
	b.ReportMetric(1.9, "s-allowed-by-limit")
	b.ReportMetric(float64(limited), "small-429s")
	b.ReportMetric(float64(backlog)/bigTook.Seconds(), "backlog-enqueues/s")
	b.Logf("backlog: %d updates of one account enqueued in %.1fs (%.0f/s); the 200 small updates (enqueued in %.2fs) all applied %.2fs after their enqueue began (their limit allows 1.9s, 2.0s with 5%% headroom); %d of their requests answered 429; the big account had %d applied meanwhile; a small account's requests came %s apart on average (the configured spacing is 105.3ms)",
		backlog, bigTook.Seconds(), float64(backlog)/bigTook.Seconds(), enqTook.Seconds(), took, limited, bigApplied, spacing.Round(100*time.Microsecond))
}

// BenchmarkAdmissionParked: the cost of a parked account's 100,000 waiting
// updates to a running worker, over 10 s: Redis commands per second and the
// test process's CPU seconds per second (the worker and the fake run in it;
// Redis is its own process), next to the same worker with nothing to do.
func BenchmarkAdmissionParked(b *testing.B) {
	// 50,000 rather than 100,000: see BenchmarkAdmissionBacklog. A parked
	// lane costs nothing per update, so the count only changes memory.
	const n, window = 50_000, 10 * time.Second
	srv := redistest.Start(b)
	rdb := srv.Client()
	fake := newTimedFake(b, trutotest.Faults{Latency: trutotest.Duration(time.Millisecond)})
	cfg := prodConfig(b, srv.URL(), fake.URL)
	w := runWorker(b, cfg, nil)
	p := newProducer(b, rdb)
	time.Sleep(2 * time.Second) // the worker settles into its idle loop

	idleCmds, idleCPU := idleCost(b, rdb, window)

	if err := w.Store().Accounts().Park(context.Background(), "acct-parked", 401, "operator park for a measurement"); err != nil {
		b.Fatalf("park: %v", err)
	}
	took := enqueueChunks(b, p, n, 5000, func(i int) tasks.Update { return measureUpdate("acct-parked", i) })
	time.Sleep(2 * time.Second) // the enqueue's wake-ups are over
	parkedCmds, parkedCPU := idleCost(b, rdb, window)
	st, err := w.Store().Scheduler().Account(context.Background(), "acct-parked")
	if err != nil {
		b.Fatal(err)
	}
	if st.Waiting != n || st.Parked == "" {
		b.Fatalf("parked account in admission: %+v; want %d waiting and parked", st, n)
	}
	if r := fake.Stats().Requests; r != 0 {
		b.Fatalf("the fake got %d requests for a parked account", r)
	}
	b.ReportMetric(idleCmds, "idle-redis-cmds/s")
	b.ReportMetric(parkedCmds, "parked-redis-cmds/s")
	b.ReportMetric(idleCPU, "idle-cpu-s/s")
	b.ReportMetric(parkedCPU, "parked-cpu-s/s")
	b.Logf("parked account with %d waiting updates (enqueued in %.1fs), over %s: %.1f Redis commands/s and %.4f CPU s/s; the same worker idle with no updates: %.1f Redis commands/s and %.4f CPU s/s",
		n, took.Seconds(), window, parkedCmds, parkedCPU, idleCmds, idleCPU)
}

// BenchmarkAdmissionGoodput: three workers on one Redis, 40 accounts, 1,500
// updates, the token's limit binding (100/s at the fake and in the workers;
// accounts allowed 100/s each). Figures: the share of the token's limit used
// (applied requests over 100/s times the time from the first request to the
// last) and the share of requests answered 429.
func BenchmarkAdmissionGoodput(b *testing.B) {
	const n, accounts, workers = 1500, 40, 3
	srv := redistest.Start(b)
	rdb := srv.Client()
	fake := newTimedFake(b, trutotest.Faults{Latency: trutotest.Duration(time.Millisecond),
		TokenLimit: trutotest.Limit{Requests: 100, Window: trutotest.Duration(time.Second)}})
	p := newProducer(b, rdb)
	enqueueChunks(b, p, n, n, func(i int) tasks.Update { return measureUpdate(fmt.Sprintf("acct-%02d", i%accounts), i) })
	b.ResetTimer()
	for range workers {
		cfg := prodConfig(b, srv.URL(), fake.URL)
		cfg.TokenRate = ratelimit.Limit{Requests: 100, Window: time.Second}
		cfg.AccountRate = ratelimit.Limit{Requests: 1000, Window: 10 * time.Second}
		runWorker(b, cfg, nil)
	}
	fake.waitHits(b, n, applied, 30*time.Second)
	b.StopTimer()
	hits := fake.snapshot()
	first, last := hits[0].arrived, hits[0].arrived
	ok, limited := 0, 0
	for _, h := range hits {
		if h.arrived.Before(first) {
			first = h.arrived
		}
		if h.arrived.After(last) {
			last = h.arrived
		}
		switch h.status {
		case http.StatusOK:
			ok++
		case http.StatusTooManyRequests:
			limited++
		}
	}
	el := last.Sub(first).Seconds()
	used := float64(ok) / (el * 100)
	slices.SortFunc(hits, func(x, y hit) int { return x.arrived.Compare(y.arrived) })
	gaps := make([]time.Duration, 0, len(hits))
	for i := 1; i < len(hits); i++ {
		gaps = append(gaps, hits[i].arrived.Sub(hits[i-1].arrived))
	}
	slices.Sort(gaps)
	q := func(f float64) time.Duration { return gaps[int(f*float64(len(gaps)-1))].Round(100 * time.Microsecond) }
	share429 := float64(limited) / float64(len(hits))
	b.ReportMetric(used, "share-of-limit-used")
	b.ReportMetric(share429, "share-429")
	b.Logf("goodput: %d workers, %d accounts: %d applied in %.2fs from first request to last = %.1f%% of the token's 100/s (95%% is the configured headroom's ceiling); %d of %d requests answered 429 (%.2f%%)",
		workers, accounts, ok, el, used*100, limited, len(hits), share429*100)
	b.Logf("gaps between consecutive requests: p10 %s, p50 %s, p90 %s, p99 %s (the configured spacing is %s)",
		q(0.1), q(0.5), q(0.9), q(0.99), (time.Second / 95).Round(100*time.Microsecond))
}

// BenchmarkAdmissionLearning: one account whose real limit at the fake is 20
// per 10 s while the worker is told 100 per 10 s; 60 updates. Figures: the
// account's request rate at the fake over the last half of the run (the
// real limit allows 2/s) and the share of requests answered 429.
func BenchmarkAdmissionLearning(b *testing.B) {
	const n = 60
	srv := redistest.Start(b)
	rdb := srv.Client()
	fake := newTimedFake(b, trutotest.Faults{Latency: trutotest.Duration(time.Millisecond),
		AccountLimit: trutotest.Limit{Requests: 20, Window: trutotest.Duration(10 * time.Second)}})
	cfg := prodConfig(b, srv.URL(), fake.URL)
	cfg.AccountRate, cfg.TokenRate = ratelimit.Limit{Requests: 100, Window: 10 * time.Second}, ratelimit.Limit{}
	w := runWorker(b, cfg, nil)
	p := newProducer(b, rdb)
	b.ResetTimer()
	enqueueChunks(b, p, n, n, func(i int) tasks.Update { return measureUpdate("acct-learn", i) })
	fake.waitHits(b, n, applied, 40*time.Second)
	b.StopTimer()
	hits := fake.snapshot()
	slices.SortFunc(hits, func(x, y hit) int { return x.arrived.Compare(y.arrived) })
	first, last := hits[0].arrived, hits[len(hits)-1].arrived
	mid := first.Add(last.Sub(first) / 2)
	var lateReqs, lateOK, limited int
	var trace []string
	for _, h := range hits {
		if h.status == http.StatusTooManyRequests {
			limited++
		}
		if !h.arrived.Before(mid) {
			lateReqs++
			if applied(h) {
				lateOK++
			}
		}
		trace = append(trace, fmt.Sprintf("%.1f:%d", h.arrived.Sub(first).Seconds(), h.status))
	}
	half := last.Sub(mid).Seconds()
	rate := float64(lateReqs) / half
	share := float64(limited) / float64(len(hits))
	st, _ := w.Store().Scheduler().Account(context.Background(), "acct-learn")
	b.ReportMetric(rate, "late-half-req/s")
	b.ReportMetric(float64(lateOK)/half, "late-half-applied/s")
	b.ReportMetric(share, "share-429")
	b.Logf("learning: %d updates in %.1fs; last half: %.2f requests/s (%.2f applied/s; the real limit allows 2/s); %d of %d requests answered 429 (%.1f%%); learned rate at the end %.2f/s",
		n, last.Sub(first).Seconds(), rate, float64(lateOK)/half, limited, len(hits), share*100, st.LearnedRate)
	b.Logf("requests (seconds from the first: status): %s", strings.Join(trace, " "))
}

// outageRun processes 2,000 updates over 20 accounts, each limited to 5/s
// (in the worker and at the fake), with production settings; with outage > 0
// the fake answers 503 to everything for that long, starting 3 s after the
// worker starts. It returns the seconds from the worker's start to the last
// update applied, and the fake's 503 count.
func outageRun(b *testing.B, outage time.Duration) (took float64, unavailable int, timeline string) {
	const n, accounts = 2000, 20
	srv := redistest.Start(b)
	rdb := srv.Client()
	fake := newTimedFake(b, trutotest.Faults{Latency: trutotest.Duration(time.Millisecond),
		AccountLimit: trutotest.Limit{Requests: 50, Window: trutotest.Duration(10 * time.Second)}})
	cfg := prodConfig(b, srv.URL(), fake.URL)
	cfg.AccountRate, cfg.TokenRate = ratelimit.Limit{Requests: 50, Window: 10 * time.Second}, ratelimit.Limit{}
	p := newProducer(b, rdb)
	enqueueChunks(b, p, n, n, func(i int) tasks.Update { return measureUpdate(fmt.Sprintf("acct-%02d", i%accounts), i) })
	start := time.Now()
	runWorker(b, cfg, nil)
	var outageAt atomic.Pointer[time.Time]
	if outage > 0 {
		t := time.AfterFunc(3*time.Second, func() {
			now := time.Now()
			outageAt.Store(&now)
			fake.StartOutage(trutotest.Outage503, outage)
		})
		defer t.Stop()
	}
	fake.waitHits(b, n, applied, outage+30*time.Second)
	var last time.Time
	hits := fake.snapshot()
	slices.SortFunc(hits, func(x, y hit) int { return x.arrived.Compare(y.arrived) })
	var late503, after []string
	for _, h := range hits {
		if applied(h) && h.answered.After(last) {
			last = h.answered
		}
		if h.status == http.StatusServiceUnavailable {
			unavailable++
		}
		if at := outageAt.Load(); at != nil {
			rel := h.arrived.Sub(at.Add(outage)).Seconds()
			switch {
			case h.status == http.StatusServiceUnavailable && rel > -outage.Seconds()+5:
				late503 = append(late503, fmt.Sprintf("%+.2f", rel))
			case applied(h) && rel > 0 && len(after) < 3:
				after = append(after, fmt.Sprintf("%+.2f", rel))
			}
		}
	}
	if outageAt.Load() != nil {
		timeline = fmt.Sprintf("503s answered from 5 s into the outage on (the probes), seconds from its end: %s; the first applied requests after its end: %s",
			strings.Join(late503, " "), strings.Join(after, " "))
	}
	if st := fake.Stats(); st.Effects != n || st.DuplicateEffects != 0 {
		b.Fatalf("fake stats %+v; want %d effects, none twice", st, n)
	}
	return last.Sub(start).Seconds(), unavailable, timeline
}

// BenchmarkAdmissionOutageDrain: 2,000 updates over 20 accounts at a binding
// limit (about 21 s without faults), once without an outage and once with a
// 20 s outage of 503s starting 3 s in. The figure is the drain overhead:
// (duration with the outage) - (duration without) - 20 s.
func BenchmarkAdmissionOutageDrain(b *testing.B) {
	const outage = 20 * time.Second
	clean, _, _ := outageRun(b, 0)
	faulty, n503, timeline := outageRun(b, outage)
	overhead := faulty - clean - outage.Seconds()
	b.ReportMetric(clean, "s-without-outage")
	b.ReportMetric(faulty, "s-with-outage")
	b.ReportMetric(overhead, "s-drain-overhead")
	b.ReportMetric(float64(n503), "requests-answered-503")
	b.Logf("outage drain: %.2fs without an outage, %.2fs with a %s outage of 503s (%d requests answered 503): overhead %.2fs (goal <= 2s)",
		clean, faulty, outage, n503, overhead)
	b.Logf("%s", timeline)
}

// BenchmarkAdmissionPickup: an idle worker with the default --poll-interval
// (50 ms); 30 updates enqueued 300 ms apart; the latency from each Enqueue's
// return to the fake receiving the update's request.
func BenchmarkAdmissionPickup(b *testing.B) {
	const n, gap = 30, 300 * time.Millisecond
	srv := redistest.Start(b)
	rdb := srv.Client()
	fake := newTimedFake(b, trutotest.Faults{Latency: trutotest.Duration(time.Millisecond)})
	cfg := prodConfig(b, srv.URL(), fake.URL)
	runWorker(b, cfg, nil)
	p := newProducer(b, rdb)
	time.Sleep(time.Second) // the worker settles into its idle loop
	b.ResetTimer()
	returned := map[string]time.Time{}
	for i := range n {
		u := measureUpdate("acct-trickle", i)
		if _, err := p.Enqueue(context.Background(), u); err != nil {
			b.Fatalf("enqueue: %v", err)
		}
		returned[u.ID] = time.Now()
		time.Sleep(gap) // the trickle's spacing
	}
	fake.waitHits(b, n, applied, 30*time.Second)
	b.StopTimer()
	var lat []time.Duration
	for _, h := range fake.snapshot() {
		if t, ok := returned[h.org]; ok && applied(h) {
			lat = append(lat, h.arrived.Sub(t))
		}
	}
	if len(lat) != n {
		b.Fatalf("matched %d of %d requests to their enqueue", len(lat), n)
	}
	slices.Sort(lat)
	p50, p99, mx := lat[len(lat)/2], lat[(len(lat)*99+99)/100-1], lat[len(lat)-1]
	b.ReportMetric(float64(p50.Microseconds())/1000, "p50-ms")
	b.ReportMetric(float64(p99.Microseconds())/1000, "p99-ms")
	b.ReportMetric(float64(mx.Microseconds())/1000, "max-ms")
	b.Logf("pick-up at a trickle (%d updates, %s apart, poll interval %s): p50 %s, p99 %s, max %s, min %s",
		n, gap, cfg.PollInterval, p50.Round(100*time.Microsecond), p99.Round(100*time.Microsecond),
		mx.Round(100*time.Microsecond), lat[0].Round(100*time.Microsecond))
}

// BenchmarkAdmissionRedisCommands: Redis commands per applied update (INFO
// commandstats, asynq's and orgsync's together, enqueue included), 2,000
// updates over 50 accounts, no limits, no faults, 1 ms latency, next to bare
// asynq doing the same PATCH (BenchmarkBareAsynq's setup).
func BenchmarkAdmissionRedisCommands(b *testing.B) {
	const n = 2000
	orgsync, orgsyncTook := orgsyncCommands(b, n)
	bare, bareTook := bareCommands(b, n)
	b.ReportMetric(orgsync, "orgsync-redis-cmds/update")
	b.ReportMetric(bare, "bare-asynq-redis-cmds/update")
	b.Logf("Redis commands per applied update, %d updates over %d accounts, enqueue included: orgsync %.1f (run %.1fs), bare asynq %.1f (run %.1fs): %.1fx",
		n, benchAccounts, orgsync, orgsyncTook.Seconds(), bare, bareTook.Seconds(), orgsync/bare)
}

func orgsyncCommands(b *testing.B, n int) (float64, time.Duration) {
	b.Helper()
	s := newBenchSetup(b)
	rdb := s.redis.Client()
	cfg := prodConfig(b, s.redis.URL(), s.fake.URL)
	cfg.AccountRate, cfg.TokenRate = ratelimit.Limit{}, ratelimit.Limit{}
	cfg.Concurrency = benchConcurrency
	p := newProducer(b, rdb)
	before := redisCallsBy(b, rdb)
	start := time.Now()
	enqueueAll(b, n, func(ctx context.Context, i int) error {
		_, err := p.Enqueue(ctx, benchUpdate(i))
		return err
	})
	var done, failed atomic.Int64
	runWorker(b, cfg, func(e tasks.Event) {
		switch {
		case e.Outcome == tasks.OutcomeCompleted && e.Class != tasks.ClassSkipped:
			done.Add(1)
		case e.Outcome != tasks.OutcomeCompleted:
			failed.Add(1)
		}
	})
	waitCompleted(b, int64(n), &done, &failed)
	took := time.Since(start)
	after := redisCallsBy(b, rdb)
	var calls int64
	for name, v := range after {
		calls += v - before[name]
	}
	checkEffects(b, s.fake, n)
	b.Logf("orgsync's commands per update by kind: %s", topCalls(before, after, float64(n), 12))
	return float64(calls) / float64(n), took
}

func bareCommands(b *testing.B, n int) (float64, time.Duration) {
	b.Helper()
	s := newBenchSetup(b)
	rdb := s.redis.Client()
	client := asynq.NewClientFromRedisClient(rdb)
	b.Cleanup(func() { _ = client.Close() })
	before := redisCalls(b, rdb)
	start := time.Now()
	enqueueBare(b, client, n)
	srv, mux, done, failed := bareServer(b, s)
	if err := srv.Start(mux); err != nil {
		b.Fatalf("asynq server start: %v", err)
	}
	b.Cleanup(srv.Shutdown)
	waitCompleted(b, int64(n), done, failed)
	took := time.Since(start)
	calls := redisCalls(b, rdb) - before
	checkEffects(b, s.fake, n)
	return float64(calls) / float64(n), took
}
