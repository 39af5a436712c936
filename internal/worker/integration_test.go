package worker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/orgsync/orgsync/internal/admission"
	"github.com/orgsync/orgsync/internal/ratelimit"
	"github.com/orgsync/orgsync/internal/redistest"
	"github.com/orgsync/orgsync/internal/testrig"
	"github.com/orgsync/orgsync/tasks"
	"github.com/orgsync/orgsync/trutoclient/trutotest"
)

const testToken = "tok_integration_3f9c1e"

// pipeline is a real Redis, the fake Truto and a running worker.
type pipeline struct {
	t        *testing.T
	redis    *redistest.Server
	rdb      *redis.Client
	fake     *trutotest.Server
	store    *tasks.Store
	producer *tasks.Producer
	worker   *Worker
	stop     context.CancelFunc
	done     chan error
	mu       sync.Mutex
	events   map[tasks.Outcome]int // handler runs by outcome
	// runs counts handler runs by account; idle counts the runs that sent
	// no request (with admission, only a stale ticket or an update the
	// ledger already knew: never a wait).
	runs map[string]int
	// held counts runs put back unsent because their account was held after
	// they were admitted, by account; heldAll in all.
	held    map[string]int
	heldAll int
	idle    int
	sent    int // requests the handler runs sent
	// accountOf is the account of each idempotency key enqueued: keys belong
	// to accounts, and the tests' keys are unique across accounts.
	accountOf map[string]string
}

// enqueueOne enqueues u, remembering its key's account.
func (p *pipeline) enqueueOne(ctx context.Context, u tasks.Update) error {
	p.mu.Lock()
	p.accountOf[u.IdempotencyKey] = u.IntegratedAccountID
	p.mu.Unlock()
	_, err := p.producer.Enqueue(ctx, u)
	return err
}

// taskID is the task id of the update with key k.
func (p *pipeline) taskID(k string) string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return tasks.TaskID(p.accountOf[k], k)
}

// sentKeys are the Idempotency-Keys the updates with keys are sent under,
// which is what the fake counts its effects by.
func (p *pipeline) sentKeys(keys []string) []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make([]string, len(keys))
	for i, k := range keys {
		out[i] = tasks.UpstreamKey(p.accountOf[k], k)
	}
	return out
}

func testConfig(redisURL, baseURL string) Config {
	return Config{
		RedisURL: redisURL, Token: NewToken(testToken), BaseURL: baseURL, Queues: []string{tasks.DefaultQueue},
		Concurrency: 50, AdminAddr: "127.0.0.1:0", AttemptTimeout: 5 * time.Second, ResultTTL: time.Hour,
		ShutdownTimeout: 5 * time.Second, PollInterval: 50 * time.Millisecond, RetryPollInterval: 200 * time.Millisecond,
		LogLevel: "warn", Policy: tasks.Policy{RetryBase: 200 * time.Millisecond, RetryCap: time.Second},
	}
}

func startPipeline(t *testing.T, faults trutotest.Faults, mutate func(*Config)) *pipeline {
	t.Helper()
	p := &pipeline{t: t, redis: redistest.Start(t), events: map[tasks.Outcome]int{}, runs: map[string]int{}, held: map[string]int{}, accountOf: map[string]string{}}
	p.rdb = p.redis.Client()
	p.fake = trutotest.NewServer(testToken, trutotest.WithFaults(faults), trutotest.WithSeed(1))
	t.Cleanup(p.fake.Close)
	cfg := testConfig(p.redis.URL(), p.fake.URL)
	if mutate != nil {
		mutate(&cfg)
	}
	p.store = tasks.NewStore(p.rdb, tasks.WithResultTTL(cfg.ResultTTL))
	p.producer = tasks.NewProducer(p.store)
	t.Cleanup(func() { _ = p.producer.Close() })
	w, err := New(context.Background(), cfg, WithLogger(NewLogger(io.Discard, "error")), WithObserver(p.observe))
	if err != nil {
		t.Fatalf("worker.New: %v", err)
	}
	p.worker = w
	ctx, cancel := context.WithCancel(context.Background())
	p.stop, p.done = cancel, make(chan error, 1)
	go func() { p.done <- w.Run(ctx) }()
	t.Cleanup(p.shutdown)
	return p
}

// observe counts one handler run.
func (p *pipeline) observe(e tasks.Event) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.events[e.Outcome]++
	p.runs[e.Account]++
	if e.Sent == 0 {
		p.idle++
	}
	if e.Outcome == tasks.OutcomeWaiting && e.Class == tasks.WaitHeld {
		// Admitted before its account's 429 hold and started after it: back to
		// its lane unsent (sending would only meet the 429).
		p.held[e.Account]++
		p.heldAll++
	}
	p.sent += e.Sent
}

// counts returns the handler runs of account, the runs by outcome and the
// runs that sent nothing, so far.
func (p *pipeline) counts(account string) (runs int, events map[tasks.Outcome]int, idle int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	events = make(map[tasks.Outcome]int, len(p.events))
	for k, v := range p.events {
		events[k] = v
	}
	return p.runs[account], events, p.idle
}

func (p *pipeline) shutdown() {
	if p.stop == nil {
		return
	}
	p.stop()
	if err := <-p.done; err != nil {
		p.t.Errorf("worker.Run: %v", err)
	}
	p.stop = nil
}

// enqueue puts n updates on the queue, one organization each, bodies numbered.
func (p *pipeline) enqueue(n int, account func(i int) string) []string {
	p.t.Helper()
	keys := make([]string, n)
	var wg sync.WaitGroup
	errs := make(chan error, n)
	sem := make(chan struct{}, 16)
	for i := 0; i < n; i++ {
		keys[i] = fmt.Sprintf("it-%06d", i)
		wg.Add(1)
		sem <- struct{}{}
		go func(i int) {
			defer func() { <-sem; wg.Done() }()
			u := tasks.Update{ID: fmt.Sprintf("org-%06d", i), IntegratedAccountID: account(i), IdempotencyKey: keys[i],
				Body: json.RawMessage(fmt.Sprintf(`{"seq":%d,"remote_data":{"n":%d}}`, i, i))}
			if err := p.enqueueOne(context.Background(), u); err != nil {
				errs <- err
			}
		}(i)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		p.t.Fatalf("enqueue: %v", err)
	}
	return keys
}

func (p *pipeline) states(keys []string) map[tasks.State]int {
	p.t.Helper()
	out := map[tasks.State]int{}
	ctx := context.Background()
	pipe := p.rdb.Pipeline()
	cmds := make([]*redis.StringCmd, len(keys))
	for i, k := range keys {
		cmds[i] = pipe.HGet(ctx, "orgsync:{"+p.taskID(k)+"}:rec", "state")
	}
	_, _ = pipe.Exec(ctx)
	for _, c := range cmds {
		out[tasks.State(c.Val())]++
	}
	return out
}

// TestPipelineEveryUpdateAppliedOnce runs updates through transient faults
// (errors before and after applying, connection resets) and checks, from the
// fake's own counts, that every update applied exactly once.
// With three admission shards the accounts spread over three hash slots and
// the same holds.
func TestPipelineEveryUpdateAppliedOnce(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ shards, n int }{{1, 1500}, {3, 900}} {
		t.Run(fmt.Sprint(tc.shards, "shards"), func(t *testing.T) {
			t.Parallel()
			appliedOnce(t, tc.shards, tc.n)
		})
	}
}

func appliedOnce(t *testing.T, shards, n int) {
	faults := trutotest.Faults{
		ErrorRates:      map[int]float64{500: 0.05, 503: 0.05, 408: 0.02},
		AfterApplyRates: map[int]float64{502: 0.05, 504: 0.03},
	}
	p := startPipeline(t, faults, func(c *Config) { c.Shards = shards })
	keys := p.enqueue(n, func(i int) string { return fmt.Sprintf("acct-%02d", i%15) })
	if shards > 1 {
		// Every shard holds some of the accounts' lanes.
		for i := 1; i < shards; i++ {
			if n, err := p.rdb.Keys(context.Background(), fmt.Sprintf("orgsync:{adm:%d}:acct:*", i)).Result(); err != nil || len(n) == 0 {
				t.Errorf("shard %d holds no account (%v)", i, err)
			}
		}
	}
	p.waitAllCompleted(keys, 2*time.Minute)
	stats := p.fake.Stats()
	c := p.fake.CountEffects(p.sentKeys(keys))
	lost, dup := c.Lost, c.Duplicated
	if lost != 0 || dup != 0 || stats.DuplicateEffects != 0 || stats.Effects != n || stats.KeyConflicts != 0 || stats.Unkeyed != 0 {
		t.Errorf("lost %d, duplicated %d; fake stats %+v; want every one of %d applied exactly once", lost, dup, stats, n)
	}
	if got := p.fake.OutOfOrder("seq"); got != 0 {
		t.Errorf("out-of-order effects = %d, want 0", got)
	}
	if dl, _ := p.store.DeadLetters().Count(context.Background()); dl != 0 {
		t.Errorf("dead letters = %d, want 0", dl)
	}
	t.Logf("fake: %d requests, %d effects, %d idempotent replays, by status %v", stats.Requests, stats.Effects, stats.Replays, stats.ByStatus)
	// Every run sends: waiting happens in admission, never in a run. Each
	// update has one completing run, plus one run per transient failure.
	// (A run is observed just after its ledger write: wait for the last ones.)
	var events map[tasks.Outcome]int
	var idle, sent int
	testrig.WaitFor(t, "every run observed", time.Minute, func() (bool, string) {
		_, events, idle = p.counts("")
		p.mu.Lock()
		sent = p.sent
		p.mu.Unlock()
		return events[tasks.OutcomeCompleted] >= n && sent >= stats.Requests, fmt.Sprint(events, sent)
	})
	wantEvents := map[tasks.Outcome]int{tasks.OutcomeCompleted: n, tasks.OutcomeRetry: events[tasks.OutcomeRetry]}
	if diff := cmp.Diff(wantEvents, events); diff != "" || idle != 0 || sent != stats.Requests {
		t.Errorf("handler runs by outcome (-want +got):\n%s\n%d runs sent nothing; runs sent %d requests, the fake saw %d", diff, idle, sent, stats.Requests)
	}
	// A stored result is readable by task id.
	st, err := p.store.Operator().Status(context.Background(), p.taskID(keys[0]), nil)
	if err != nil || st.State != tasks.StatusCompleted || st.Result == nil || st.Result.StatusCode != 200 {
		t.Errorf("status of the first update = %+v, %v", st, err)
	}
	// The admin endpoint answers.
	for _, path := range []string{"/healthz", "/readyz"} {
		resp, err := http.Get(p.worker.AdminURL() + path)
		if err != nil {
			t.Fatalf("GET %s: %v", path, err)
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Errorf("GET %s = %d, want 200", path, resp.StatusCode)
		}
	}
	p.assertNoToken()
}

// assertNoToken searches every key and value in Redis for the API token.
func (p *pipeline) assertNoToken() {
	p.t.Helper()
	testrig.AssertNoSecretInRedis(p.t, p.rdb, testToken)
}

// TestDeadLettersBeyondAsynqArchiveCap dead-letters more updates than asynq's
// archive keeps (10,000 per queue), finds every one in orgsync's own store,
// then replays them all once the upstream is fixed.
func TestDeadLettersBeyondAsynqArchiveCap(t *testing.T) {
	t.Parallel()
	faults := trutotest.Faults{AccountStatus: map[string]int{"acct-bad": 422}}
	p := startPipeline(t, faults, nil)
	const n = 10_050
	keys := p.enqueue(n, func(int) string { return "acct-bad" })
	ctx := context.Background()
	testrig.WaitFor(t, "every update dead-lettered", 4*time.Minute, func() (bool, string) {
		c, err := p.store.DeadLetters().Count(ctx)
		return err == nil && c == n, fmt.Sprintf("%d dead letters, err %v", c, err)
	})
	ins := asynq.NewInspectorFromRedisClient(p.rdb)
	qi, err := ins.GetQueueInfo(tasks.DefaultQueue)
	if err != nil {
		t.Fatal(err)
	}
	if qi.Archived > 10_000 {
		t.Logf("asynq archive holds %d (its cap is 10,000)", qi.Archived)
	}
	found := map[string]bool{}
	err = p.store.DeadLetters().Each(ctx, tasks.Filter{Account: "acct-bad", StatusCode: 422}, func(d tasks.DeadLetter) error {
		found[d.IdempotencyKey] = true
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range keys {
		if !found[k] {
			t.Fatalf("dead letter of %s missing (found %d of %d); asynq's archive holds %d", k, len(found), n, qi.Archived)
		}
	}
	t.Logf("%d dead letters in orgsync's store; asynq's archive holds %d", len(found), qi.Archived)
	if p.fake.Stats().Effects != 0 {
		t.Fatalf("fake applied %d effects for a 422 account", p.fake.Stats().Effects)
	}

	// Fix the upstream and replay everything: each dead letter as the store
	// gives it, eight replays at a time (as several operators' `dlq replay`
	// would). One at a time, the 10,050 replays' round trips were most of the
	// test's time.
	p.fake.UpdateFaults(func(f *trutotest.Faults) { f.AccountStatus = nil })
	var (
		replayed  atomic.Int64
		replayErr = make(chan error, 8)
		letters   = make(chan tasks.DeadLetter)
		wg        sync.WaitGroup
	)
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for d := range letters {
				switch out, err := p.store.Operator().Replay(ctx, d, tasks.ReplayOptions{}); {
				case err != nil:
					select {
					case replayErr <- fmt.Errorf("replay %s: %w", d.TaskID, err):
					default:
					}
				case out.Status == "replayed":
					replayed.Add(1)
				}
			}
		}()
	}
	err = p.store.DeadLetters().Each(ctx, tasks.Filter{}, func(d tasks.DeadLetter) error {
		letters <- d
		return nil
	})
	close(letters)
	wg.Wait()
	close(replayErr)
	if err == nil {
		err = <-replayErr
	}
	if err != nil || replayed.Load() != n {
		t.Fatalf("replayed %d of %d: %v", replayed.Load(), n, err)
	}
	p.waitAllCompleted(keys, 4*time.Minute)
	stats := p.fake.Stats()
	if stats.Effects != n || stats.DuplicateEffects != 0 {
		t.Errorf("after replay: fake stats %+v; want %d effects, no duplicates", stats, n)
	}
	if c, _ := p.store.DeadLetters().Count(ctx); c != 0 {
		t.Errorf("%d dead letters left after replay, want 0", c)
	}
}

func jsonRaw(s string) json.RawMessage { return json.RawMessage(s) }

// TestShardCountChangeRefusedWhileUpdatesWait: a worker started with another
// --shards than the one updates wait under refuses to start, saying which
// count to use, and changes nothing; once drained, the new count is taken.
func TestShardCountChangeRefusedWhileUpdatesWait(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	rdb := srv.Client()
	ctx := context.Background()
	store := tasks.NewStore(rdb)
	producer := tasks.NewProducer(store)
	t.Cleanup(func() { _ = producer.Close() })
	if _, err := producer.Enqueue(ctx, tasks.Update{ID: "org-1", IntegratedAccountID: "acct-1", Body: json.RawMessage(`{"a":1}`)}); err != nil {
		t.Fatal(err)
	}
	cfg := testConfig(srv.URL(), "http://127.0.0.1:1")
	cfg.AdminAddr, cfg.Shards = "", 3
	_, err := New(ctx, cfg, WithRedis(rdb), WithLogger(NewLogger(io.Discard, "error")))
	if err == nil || !strings.Contains(err.Error(), "--shards 1") || !errors.Is(err, admission.ErrShards) {
		t.Fatalf("New with --shards 3 while an update waits under 1: %v; want an error naming --shards 1", err)
	}
	if n, _ := store.Scheduler().Shards(ctx); n != 1 {
		t.Errorf("after the refusal producers route by %d shards; want 1", n)
	}
	st, err := store.Scheduler().Stats(ctx)
	if err != nil || st.Scheduled != 1 {
		t.Errorf("the waiting update: admission stats %+v, %v; want it still scheduled", st, err)
	}
}

// TestShardsShareTheTokenByAccount: four busy accounts over three shards
// (two in one), the API token's limit binding: half-way, every account has
// had about a quarter of the requests (a shard's share follows its accounts
// with work), nothing was answered 429, nothing applied twice.
func TestShardsShareTheTokenByAccount(t *testing.T) {
	t.Parallel()
	// Two accounts in shard 0, one in each other shard.
	byShard := [][]string{nil, nil, nil}
	for i := 0; len(byShard[0]) < 2 || len(byShard[1]) < 1 || len(byShard[2]) < 1; i++ {
		a := fmt.Sprintf("acct-%02d", i)
		if k := admission.ShardOf(a, 3); len(byShard[k]) < 2-min(k, 1) {
			byShard[k] = append(byShard[k], a)
		}
	}
	accts := slices.Concat(byShard...)
	faults := trutotest.Faults{TokenLimit: trutotest.Limit{Requests: 60, Window: trutotest.Duration(time.Second)}}
	p := startPipeline(t, faults, func(c *Config) {
		c.Shards = 3
		c.TokenRate = ratelimit.Limit{Requests: 40, Window: time.Second}
	})
	const each = 60
	keys := p.enqueue(4*each, func(i int) string { return accts[i%4] })
	var mid map[string]int
	testrig.WaitFor(t, "half the updates applied", time.Minute, func() (bool, string) {
		mid = p.effectsByAccount()
		total := 0
		for _, n := range mid {
			total += n
		}
		return total >= 2*each, fmt.Sprint(mid)
	})
	p.waitAllCompleted(keys, 2*time.Minute)
	st := p.fake.Stats()
	c := p.fake.CountEffects(p.sentKeys(keys))
	t.Logf("half-way, effects by account %v (shards: %d %d %d %d); fake: %d requests, by status %v",
		mid, admission.ShardOf(accts[0], 3), admission.ShardOf(accts[1], 3), admission.ShardOf(accts[2], 3), admission.ShardOf(accts[3], 3),
		st.Requests, st.ByStatus)
	if c.Lost != 0 || c.Duplicated != 0 || st.DuplicateEffects != 0 || st.ByStatus[429] != 0 {
		t.Errorf("lost %d, duplicated %d, 429s %d; want 0 each", c.Lost, c.Duplicated, st.ByStatus[429])
	}
	for _, a := range accts {
		// A fair share half-way is 30 of 120; by shard it would be 20 or 40.
		if mid[a] < 24 || mid[a] > 36 {
			t.Errorf("half-way %s (shard %d) had %d of 120 requests; want about 30 (a shard's share by its accounts)", a, admission.ShardOf(a, 3), mid[a])
		}
	}
}

// effectsByAccount counts the fake's applied requests per account so far.
func (p *pipeline) effectsByAccount() map[string]int {
	out := map[string]int{}
	for _, r := range p.fake.Requests() {
		if r.Status == 200 {
			out[r.Account]++
		}
	}
	return out
}
