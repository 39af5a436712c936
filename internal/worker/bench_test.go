package worker

// Throughput of orgsync against bare asynq, in one process, on the same setup:
// a private redis-server, the in-process fake Truto with 1 ms latency, no
// faults and no rate limits, 50 integrated accounts, one organization per
// update, 16 enqueuing goroutines, 50 concurrent handlers. The numbers are
// measured, never asserted: they are for the README.
//
// Run them (redis-server must be on PATH):
//
//	go test -run '^$' -bench 'Orgsync|BareAsynq' -benchtime 5000x -count 3 ./internal/worker/
//
// Always pass -benchtime Nx: each run of a benchmark starts its own Redis and
// fake and processes exactly b.N updates, so a time-based -benchtime would
// only waste runs on tiny b.N. Reported per benchmark:
//   - ns/op: wall time from worker start to the last update completed, per update;
//   - updates/s: b.N over that same wall time;
//   - enqueues/s: b.N over the wall time of enqueuing them (before the worker starts).

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hibiken/asynq"

	"github.com/orgsync/orgsync/internal/bench"
	"github.com/orgsync/orgsync/internal/redistest"
	"github.com/orgsync/orgsync/tasks"
	"github.com/orgsync/orgsync/trutoclient/trutotest"
)

const (
	benchAccounts    = 50
	benchEnqueuers   = 16
	benchConcurrency = 50
	benchLatency     = time.Millisecond
	// benchStall fails a run whose completions stop advancing for this long.
	benchStall = 30 * time.Second
	// benchPoll is how often the completion count is looked at; it bounds how
	// much the measured wall time can overshoot the last completion.
	benchPoll = 2 * time.Millisecond
)

// benchSetup is what both benchmarks run against, fresh for every run.
type benchSetup struct {
	redis *redistest.Server
	fake  *trutotest.Server
}

func newBenchSetup(b *testing.B) benchSetup {
	b.Helper()
	s := benchSetup{redis: redistest.Start(b)}
	// No faults and zero-request limits (unlimited): the upstream is never the bottleneck.
	// Recording no requests keeps the fake's own bookkeeping small; its counts stay exact.
	s.fake = trutotest.NewServer(testToken,
		trutotest.WithFaults(trutotest.Faults{Latency: trutotest.Duration(benchLatency)}),
		trutotest.WithMaxRecorded(0), trutotest.WithSeed(1))
	b.Cleanup(s.fake.Close)
	return s
}

// benchUpdate is update number i: its own organization, one of benchAccounts accounts.
func benchUpdate(i int) tasks.Update {
	return tasks.Update{
		ID:                  fmt.Sprintf("org-%07d", i),
		IntegratedAccountID: fmt.Sprintf("acct-%02d", i%benchAccounts),
		IdempotencyKey:      fmt.Sprintf("bench-%07d", i),
		Body:                json.RawMessage(fmt.Sprintf(`{"seq":%d,"remote_data":{"n":%d}}`, i, i)),
	}
}

// enqueueAll calls enqueue for 0..n-1 from benchEnqueuers goroutines and
// returns the wall time it took.
func enqueueAll(b *testing.B, n int, enqueue func(ctx context.Context, i int) error) time.Duration {
	b.Helper()
	ctx := context.Background()
	next := make(chan int)
	errc := make(chan error, benchEnqueuers)
	var wg sync.WaitGroup
	start := time.Now()
	for range benchEnqueuers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				if err := enqueue(ctx, i); err != nil {
					errc <- fmt.Errorf("enqueue update %d: %w", i, err)
					for range next {
						// Drain so the feeder is not blocked by a failed goroutine.
					}
					return
				}
			}
		}()
	}
	for i := range n {
		next <- i
	}
	close(next)
	wg.Wait()
	elapsed := time.Since(start)
	close(errc)
	for err := range errc {
		b.Fatal(err)
	}
	return elapsed
}

// waitCompleted polls done until it reaches n, failing the run if it stops
// advancing for benchStall; failed is reported alongside to explain a stall.
func waitCompleted(b *testing.B, n int64, done, failed *atomic.Int64) {
	b.Helper()
	tick := time.NewTicker(benchPoll)
	defer tick.Stop()
	last, lastMove := int64(-1), time.Now()
	for range tick.C {
		got := done.Load()
		if got >= n {
			return
		}
		if got != last {
			last, lastMove = got, time.Now()
			continue
		}
		if time.Since(lastMove) > benchStall {
			b.Fatalf("stalled for %s at %d of %d updates completed (%d failed runs)", benchStall, got, n, failed.Load())
		}
	}
}

// checkEffects fails the run unless the fake applied every update exactly once:
// a benchmark that lost or repeated work would report a meaningless rate.
func checkEffects(b *testing.B, fake *trutotest.Server, n int) {
	b.Helper()
	st := fake.Stats()
	if st.Effects != n || st.DuplicateEffects != 0 || st.Unkeyed != 0 {
		b.Fatalf("fake stats %+v; want %d effects, each keyed and applied once", st, n)
	}
}

func reportRates(b *testing.B, n int, enqueue, process time.Duration) {
	b.Helper()
	b.ReportMetric(float64(n)/process.Seconds(), "updates/s")
	b.ReportMetric(float64(n)/enqueue.Seconds(), "enqueues/s")
}

// BenchmarkOrgsync enqueues b.N updates with tasks.Producer, then runs the
// real worker (New + Run) until the handler has completed every one of them.
//
//	go test -run '^$' -bench Orgsync -benchtime 5000x -count 3 ./internal/worker/
func BenchmarkOrgsync(b *testing.B) {
	b.StopTimer()
	n := b.N
	s := newBenchSetup(b)
	rdb := s.redis.Client()
	cfg := testConfig(s.redis.URL(), s.fake.URL)
	cfg.AdminAddr = "" // no listener: nothing to measure there, and no port to collide on
	cfg.Concurrency = benchConcurrency
	cfg.LogLevel = "error"

	producer := tasks.NewProducer(tasks.NewStore(rdb, tasks.WithResultTTL(cfg.ResultTTL)))
	b.Cleanup(func() { _ = producer.Close() })
	enqueueTime := enqueueAll(b, n, func(ctx context.Context, i int) error {
		_, err := producer.Enqueue(ctx, benchUpdate(i))
		return err
	})

	var done, failed atomic.Int64
	w, err := New(context.Background(), cfg, WithLogger(NewLogger(io.Discard, "error")), WithObserver(func(e tasks.Event) {
		// A "skipped" completion is a re-run of an update already counted.
		switch {
		case e.Outcome == tasks.OutcomeCompleted && e.Class != tasks.ClassSkipped:
			done.Add(1)
		case e.Outcome != tasks.OutcomeCompleted:
			failed.Add(1)
		}
	}))
	if err != nil {
		b.Fatalf("worker.New: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	runErr := make(chan error, 1)

	b.ResetTimer()
	b.StartTimer()
	start := time.Now()
	go func() { runErr <- w.Run(ctx) }()
	b.Cleanup(func() {
		cancel()
		if err := <-runErr; err != nil {
			b.Errorf("worker.Run: %v", err)
		}
	})
	waitCompleted(b, int64(n), &done, &failed)
	processTime := time.Since(start)
	b.StopTimer()

	checkEffects(b, s.fake, n)
	reportRates(b, n, enqueueTime, processTime)
}

// BenchmarkBareAsynq is the baseline: the same b.N updates through a plain
// asynq.Client and asynq.Server whose handler only sends the PATCH.
//
//	go test -run '^$' -bench BareAsynq -benchtime 5000x -count 3 ./internal/worker/
func BenchmarkBareAsynq(b *testing.B) {
	b.StopTimer()
	n := b.N
	s := newBenchSetup(b)

	client := asynq.NewClientFromRedisClient(s.redis.Client())
	b.Cleanup(func() { _ = client.Close() })
	enqueueTime := enqueueBare(b, client, n)
	srv, mux, done, failed := bareServer(b, s)

	b.ResetTimer()
	b.StartTimer()
	start := time.Now()
	if err := srv.Start(mux); err != nil {
		b.Fatalf("asynq server start: %v", err)
	}
	b.Cleanup(srv.Shutdown)
	waitCompleted(b, int64(n), done, failed)
	processTime := time.Since(start)
	b.StopTimer()

	checkEffects(b, s.fake, n)
	reportRates(b, n, enqueueTime, processTime)
}

// enqueueBare enqueues n updates as bare asynq tasks and returns how long it took.
func enqueueBare(b *testing.B, client *asynq.Client, n int) time.Duration {
	b.Helper()
	return enqueueAll(b, n, func(ctx context.Context, i int) error {
		u := benchUpdate(i)
		t, err := bench.BareTask(bench.BarePayload{ID: u.ID, Account: u.IntegratedAccountID, Body: u.Body, IdempotencyKey: u.IdempotencyKey})
		if err != nil {
			return err
		}
		_, err = client.EnqueueContext(ctx, t)
		return err
	})
}

// bareServer is the baseline's plain asynq server (internal/bench; not
// started) and its counts of completed and failed PATCHes.
func bareServer(b *testing.B, s benchSetup) (*asynq.Server, *asynq.ServeMux, *atomic.Int64, *atomic.Int64) {
	b.Helper()
	srv, mux, h := bench.NewBareServer(s.redis.Addr, s.fake.URL, testToken, benchConcurrency)
	b.Cleanup(h.Client.CloseIdleConnections)
	return srv, mux, &h.Done, &h.Failed
}
