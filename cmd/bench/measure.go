package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/orgsync/orgsync/internal/bench"
	"github.com/orgsync/orgsync/internal/worker"
	"github.com/orgsync/orgsync/tasks"
)

// stall fails a measurement whose progress stops for this long.
const stall = 30 * time.Second

// update is update number i: its own organization, one of the accounts, a
// body of about bodyBytes (0: a small one).
func update(s settings, i, bodyBytes int) tasks.Update {
	body := fmt.Sprintf(`{"seq":%d,"remote_data":{"n":%d}}`, i, i)
	if bodyBytes > len(body) {
		// Padding inside remote_data, which the fake echoes: the response is
		// about as large as the body.
		pad := strings.Repeat("x", bodyBytes-len(body)-len(`,"pad":""`))
		body = fmt.Sprintf(`{"seq":%d,"remote_data":{"n":%d,"pad":"%s"}}`, i, i, pad)
	}
	return tasks.Update{ID: fmt.Sprintf("org-%07d", i), IntegratedAccountID: fmt.Sprintf("acct-%02d", i%s.accounts),
		IdempotencyKey: fmt.Sprintf("bench-%07d", i), Body: json.RawMessage(body)}
}

func bareTask(u tasks.Update) (*asynq.Task, error) {
	return bench.BareTask(bench.BarePayload{ID: u.ID, Account: u.IntegratedAccountID, Body: u.Body, IdempotencyKey: u.IdempotencyKey})
}

type enqueueFigures struct {
	batched, run, bare float64 // lines/s
	redisVersion       string
}

func measureEnqueue(ctx context.Context, s settings) (enqueueFigures, error) {
	var f enqueueFigures
	lines := make([]tasks.Line, s.lines)
	for i := range lines {
		lines[i] = tasks.Line{No: int64(i + 1), Update: update(s, i, 0)}
	}
	orgsync := func(opts ...tasks.EnqueueOption) (float64, error) {
		var rate float64
		err := withRedis(func(r *bench.Redis) error {
			rdb := r.Client()
			defer rdb.Close()
			f.redisVersion = bench.Version(ctx, rdb)
			p := tasks.NewProducer(tasks.NewStore(rdb))
			start := time.Now()
			_, errs := p.EnqueueLines(ctx, lines, opts...)
			took := time.Since(start)
			for i, err := range errs {
				if err != nil {
					return fmt.Errorf("enqueue line %d: %w", i+1, err)
				}
			}
			rate = float64(len(lines)) / took.Seconds()
			return nil
		})
		return rate, err
	}
	var err error
	if f.batched, err = orgsync(); err != nil {
		return f, err
	}
	if f.run, err = orgsync(tasks.InRun("bench")); err != nil {
		return f, err
	}
	err = withRedis(func(r *bench.Redis) error {
		rdb := r.Client()
		defer rdb.Close()
		client := asynq.NewClientFromRedisClient(rdb)
		start := time.Now()
		for _, l := range lines {
			t, err := bareTask(l.Update)
			if err != nil {
				return err
			}
			if _, err := client.EnqueueContext(ctx, t); err != nil {
				return fmt.Errorf("asynq enqueue: %w", err)
			}
		}
		f.bare = float64(len(lines)) / time.Since(start).Seconds()
		return nil
	})
	return f, err
}

type pipelineFigures struct {
	orgsync, bare pipelineSide
}

// pipelineSide is one side's figures, per applied update where not a rate.
type pipelineSide struct {
	rate     float64       // updates/s, worker start to last completion
	cmds     float64       // Redis commands, enqueue included
	trips    float64       // Redis read events (round trips and pipelines), enqueue included
	redisCPU time.Duration // Redis's CPU, enqueue included
	goCPU    time.Duration // this process's CPU (producer, worker and fake alike), enqueue included; 0: not measured
}

// workerConfig is the worker as an operator would run it, told of no limits
// (the fake has none), at the bench's concurrency.
func workerConfig(r *bench.Redis, fakeURL string, s settings) (worker.Config, error) {
	lookup := func(k string) (string, bool) {
		if k == "TRUTO_API_TOKEN" {
			return token, true
		}
		return "", false
	}
	return worker.LoadConfig([]string{"--redis-url", r.URL(), "--base-url", fakeURL, "--admin-addr=", "--log-level", "error",
		"--account-rate", "0", "--token-rate", "0", "--concurrency", strconv.Itoa(s.concurrency)}, lookup, io.Discard)
}

// runOrgsync enqueues updates (batched), runs a worker until every one has
// completed and admission is empty, and returns how long the worker took.
// The worker keeps running until stop is called.
func runOrgsync(ctx context.Context, r *bench.Redis, fakeURL string, s settings, updates []tasks.Update) (took time.Duration, stop func(), err error) {
	rdb := r.Client()
	defer rdb.Close()
	store := tasks.NewStore(rdb)
	_, errs := tasks.NewProducer(store).EnqueueMany(ctx, updates)
	for i, err := range errs {
		if err != nil {
			return 0, nil, fmt.Errorf("enqueue update %d: %w", i, err)
		}
	}
	cfg, err := workerConfig(r, fakeURL, s)
	if err != nil {
		return 0, nil, err
	}
	var done atomic.Int64
	w, err := worker.New(ctx, cfg, worker.WithLogger(worker.NewLogger(io.Discard, "error")), worker.WithObserver(func(e tasks.Event) {
		if e.Outcome == tasks.OutcomeCompleted && e.Class != tasks.ClassSkipped {
			done.Add(1)
		}
	}))
	if err != nil {
		return 0, nil, err
	}
	wctx, cancel := context.WithCancel(ctx)
	ended := make(chan error, 1)
	start := time.Now()
	go func() { ended <- w.Run(wctx) }()
	stop = func() { cancel(); <-ended }
	n := int64(len(updates))
	if err := waitUntil("orgsync", stall, done.Load, func() bool { return done.Load() >= n }); err != nil {
		stop()
		return 0, nil, err
	}
	took = time.Since(start)
	// The run is over when admission holds nothing more (the last updates
	// leave it just after their result is stored).
	err = waitUntil("admission to empty", stall, func() int64 { return 0 }, func() bool {
		st, err := store.Scheduler().Stats(ctx)
		return err == nil && st.Admitted+st.Running+st.Scheduled == 0
	})
	if err != nil {
		stop()
		return 0, nil, err
	}
	return took, stop, nil
}

// runBare enqueues updates as bare asynq tasks (with opts), runs the bare
// server until every one is done, and returns how long the server took.
func runBare(ctx context.Context, r *bench.Redis, fakeURL string, s settings, updates []tasks.Update, opts ...asynq.Option) (took time.Duration, stop func(), err error) {
	rdb := r.Client()
	defer rdb.Close()
	client := asynq.NewClientFromRedisClient(rdb)
	for _, u := range updates {
		t, err := bareTask(u)
		if err != nil {
			return 0, nil, err
		}
		if _, err := client.EnqueueContext(ctx, t, opts...); err != nil {
			return 0, nil, fmt.Errorf("asynq enqueue: %w", err)
		}
	}
	srv, mux, h := bench.NewBareServer(r.Addr, fakeURL, token, s.concurrency)
	start := time.Now()
	if err := srv.Start(mux); err != nil {
		return 0, nil, err
	}
	n := int64(len(updates))
	if err := waitUntil("bare asynq", stall, h.Done.Load, func() bool { return h.Done.Load() >= n }); err != nil {
		srv.Shutdown()
		return 0, nil, err
	}
	return time.Since(start), srv.Shutdown, nil
}

func measurePipeline(ctx context.Context, s settings) (pipelineFigures, error) {
	var f pipelineFigures
	updates := make([]tasks.Update, s.updates)
	for i := range updates {
		updates[i] = update(s, i, 0)
	}
	side := func(run func(r *bench.Redis, fakeURL string) (time.Duration, func(), error)) (p pipelineSide, err error) {
		err = withRedis(func(r *bench.Redis) error {
			fake := newFake()
			defer fake.Close()
			rdb := r.Client()
			defer rdb.Close()
			before, err := bench.LoadOf(ctx, rdb)
			if err != nil {
				return err
			}
			cpu0, cpuOK := processCPU()
			took, stop, err := run(r, fake.URL)
			if err != nil {
				return err
			}
			cpu1, _ := processCPU()
			after, err := bench.LoadOf(ctx, rdb)
			stop()
			if err != nil {
				return err
			}
			if st := fake.Stats(); st.Effects != len(updates) || st.DuplicateEffects != 0 {
				return fmt.Errorf("the fake applied %d updates (%d twice); want %d once each", st.Effects, st.DuplicateEffects, len(updates))
			}
			p.rate = float64(len(updates)) / took.Seconds()
			p.cmds, p.redisCPU, p.trips = after.Per(before, len(updates))
			if cpuOK {
				p.goCPU = (cpu1 - cpu0) / time.Duration(len(updates))
			}
			return nil
		})
		return p, err
	}
	var err error
	f.orgsync, err = side(func(r *bench.Redis, fakeURL string) (time.Duration, func(), error) {
		return runOrgsync(ctx, r, fakeURL, s, updates)
	})
	if err != nil {
		return f, fmt.Errorf("orgsync: %w", err)
	}
	f.bare, err = side(func(r *bench.Redis, fakeURL string) (time.Duration, func(), error) {
		return runBare(ctx, r, fakeURL, s, updates)
	})
	if err != nil {
		return f, fmt.Errorf("bare asynq: %w", err)
	}
	return f, nil
}

type memoryFigures struct {
	orgsync, bare float64 // bytes per retained update
	response      int     // bytes of one stored response
	breakdown     string  // orgsync's bytes per update by kind of key
}

// breakdown sums MEMORY USAGE by key shape (digits and hex folded to #) and
// lists the shapes by bytes per update.
func breakdown(ctx context.Context, rdb *redis.Client, n int) (string, error) {
	by := map[string]int64{}
	iter := rdb.Scan(ctx, 0, "*", 1000).Iterator()
	for iter.Next(ctx) {
		k := iter.Val()
		used, err := rdb.MemoryUsage(ctx, k, 0).Result()
		if err != nil {
			continue // gone meanwhile
		}
		by[shape(k)] += used
	}
	if err := iter.Err(); err != nil {
		return "", err
	}
	type kv struct {
		k string
		v int64
	}
	var all []kv
	for k, v := range by {
		all = append(all, kv{k, v})
	}
	slices.SortFunc(all, func(a, b kv) int { return int(b.v - a.v) })
	var parts []string
	for _, x := range all[:min(8, len(all))] {
		parts = append(parts, fmt.Sprintf("%s %.0f", x.k, float64(x.v)/float64(n)))
	}
	return strings.Join(parts, ", "), nil
}

func shape(k string) string {
	return strings.Map(func(r rune) rune {
		if (r >= '0' && r <= '9') || (r >= 'a' && r <= 'f') {
			return '#'
		}
		return r
	}, k)
}

func measureMemory(ctx context.Context, s settings) (memoryFigures, error) {
	var f memoryFigures
	updates := make([]tasks.Update, s.memory)
	for i := range updates {
		updates[i] = update(s, i, s.bodyBytes)
	}
	side := func(run func(r *bench.Redis, fakeURL string) (time.Duration, func(), error), after func(rdb *redis.Client) error) (float64, error) {
		var per float64
		err := withRedis(func(r *bench.Redis) error {
			fake := newFake()
			defer fake.Close()
			rdb := r.Client()
			defer rdb.Close()
			before, err := bench.UsedMemory(ctx, rdb)
			if err != nil {
				return err
			}
			_, stop, err := run(r, fake.URL)
			if err != nil {
				return err
			}
			defer stop()
			used, err := bench.UsedMemory(ctx, rdb)
			if err != nil {
				return err
			}
			per = float64(used-before) / float64(len(updates))
			if after != nil {
				return after(rdb)
			}
			return nil
		})
		return per, err
	}
	var err error
	f.orgsync, err = side(func(r *bench.Redis, fakeURL string) (time.Duration, func(), error) {
		return runOrgsync(ctx, r, fakeURL, s, updates)
	}, func(rdb *redis.Client) error {
		u := updates[0]
		rec, err := tasks.NewStore(rdb).Ledger().Get(ctx, tasks.TaskID(u.IntegratedAccountID, u.IdempotencyKey))
		if err != nil || rec.Result == nil {
			return fmt.Errorf("read a stored result: %v", err)
		}
		f.response = len(rec.Result.Body) + len(rec.Result.BodyText)
		f.breakdown, err = breakdown(ctx, rdb, len(updates))
		return err
	})
	if err != nil {
		return f, fmt.Errorf("orgsync: %w", err)
	}
	f.bare, err = side(func(r *bench.Redis, fakeURL string) (time.Duration, func(), error) {
		return runBare(ctx, r, fakeURL, s, updates, asynq.Retention(tasks.DefaultResultTTL))
	}, nil)
	if err != nil {
		return f, fmt.Errorf("bare asynq: %w", err)
	}
	return f, nil
}

type millionFigures struct {
	bulkSeconds, bulkRSS float64
	manySeconds, manyRSS float64
}

// childEnv makes this program the child that measures EnqueueMany alone:
// "N REDIS_URL".
const childEnv = "ORGSYNC_BENCH_ENQUEUE_MANY"

func measureMillion(ctx context.Context, s settings) (millionFigures, error) {
	var f millionFigures
	dir, err := os.MkdirTemp("", "orgsync-bench")
	if err != nil {
		return f, err
	}
	defer os.RemoveAll(dir)
	build := exec.CommandContext(ctx, "go", "build", "-o", filepath.Join(dir, "enqueue"), "github.com/orgsync/orgsync/cmd/enqueue")
	if out, err := build.CombinedOutput(); err != nil {
		return f, fmt.Errorf("build enqueue: %w\n%s", err, out)
	}
	file := filepath.Join(dir, "lines.ndjson")
	if err := writeLines(file, s); err != nil {
		return f, err
	}
	err = withRedis(func(r *bench.Redis) error {
		took, rss, err := childRSS(exec.CommandContext(ctx, filepath.Join(dir, "enqueue"), "--redis-url", r.URL(), "bulk", file, "--run", "bench"))
		f.bulkSeconds, f.bulkRSS = took.Seconds(), rss
		return err
	})
	if err != nil {
		return f, err
	}
	self, err := os.Executable()
	if err != nil {
		return f, err
	}
	err = withRedis(func(r *bench.Redis) error {
		cmd := exec.CommandContext(ctx, self)
		cmd.Env = append(os.Environ(), childEnv+"="+strconv.Itoa(s.million)+" "+r.URL())
		took, rss, err := childRSS(cmd)
		f.manySeconds, f.manyRSS = took.Seconds(), rss
		return err
	})
	return f, err
}

// writeLines writes s.million small update lines, one organization each.
func writeLines(path string, s settings) error {
	out, err := os.Create(path)
	if err != nil {
		return err
	}
	w := bufio.NewWriterSize(out, 1<<20)
	for i := range s.million {
		fmt.Fprintf(w, `{"id":"org-%07d","integrated_account_id":"acct-%02d","body":{"seq":%d,"name":"Org %d"}}`+"\n", i, i%s.accounts, i, i)
	}
	if err := w.Flush(); err != nil {
		return err
	}
	return out.Close()
}

// child enqueues N updates with EnqueueMany, 10,000 per call, as a service
// would from its own data; its peak RSS is the parent's figure.
func child() int {
	n, url, _ := strings.Cut(os.Getenv(childEnv), " ")
	total, err := strconv.Atoi(n)
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench child:", err)
		return 2
	}
	opt, err := redis.ParseURL(url)
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench child:", err)
		return 2
	}
	rdb := redis.NewClient(opt)
	defer rdb.Close()
	p := tasks.NewProducer(tasks.NewStore(rdb))
	s := settings{accounts: 50}
	const chunk = 10_000
	for lo := 0; lo < total; lo += chunk {
		us := make([]tasks.Update, 0, chunk)
		for i := lo; i < min(lo+chunk, total); i++ {
			us = append(us, update(s, i, 0))
		}
		_, errs := p.EnqueueMany(context.Background(), us, tasks.InRun("bench-many"))
		for _, err := range errs {
			if err != nil {
				fmt.Fprintln(os.Stderr, "bench child:", err)
				return 1
			}
		}
	}
	return 0
}
