// Package admission decides when an update may be sent, before it reaches
// the queue. Updates wait in Redis, in a lane per integrated account (each
// organization's updates in enqueue order, one at a time), and a schedule of
// accounts by the time each may next send. An update is admitted (handed to
// asynq's pending list) only when it can be sent now: its account is neither
// parked nor holding, a slot of the account's and the token's rate limits is
// taken for it, nothing earlier of its organization is admitted or running.
// Waiting costs no handler run and no per-update Redis traffic: a held
// account's lane is frozen as a whole, and admitters sleep until the next
// slot or until woken.
//
// Every process can admit: the rules are one Lua script whose keys share one
// hash slot, so several admitters never admit the same update twice and a
// Redis Cluster works. On a Cluster the accounts can be spread over several
// such slots (Config.Shards): an account lives in one shard, chosen by a
// stable hash of its id, so its lane, limits and holds stay in one script's
// reach; the API token's schedule lives in shard 0 and every shard's
// admission pass takes its slots from there first. Leases cover the time from admission to the end of the
// run; an update whose lease runs out (its worker or admitter was killed) is
// put back under a new generation, and the stale ticket is refused if asynq
// ever runs it.
package admission

import (
	"context"
	_ "embed"
	"errors"
	"fmt"
	"hash/fnv"
	"math"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/orgsync/orgsync/internal/ratelimit"
	"github.com/orgsync/orgsync/internal/redisconn"
)

//go:embed script.lua
var scriptSource string

var script = redis.NewScript(scriptSource)

// Defaults.
const (
	// DefaultLease is how long an admitted or running update is held for its
	// admitter or worker without a heartbeat before it is put back.
	DefaultLease = 10 * time.Second
	// DefaultMaxAdmitted bounds the updates admitted but not yet started,
	// across all processes: admission runs no further ahead of the workers.
	DefaultMaxAdmitted = 64
	// DefaultBatch is how many updates one admission call may admit.
	DefaultBatch = 32
	// DefaultMaxLearnedInterval is the slowest a learned rate gets: one
	// request per minute.
	DefaultMaxLearnedInterval = time.Minute
	// DefaultAccountFailures is how many transient failures of an account in
	// a row hold its lane.
	DefaultAccountFailures = 5
)

// Config configures a Scheduler. Zero fields take the defaults; a zero Limit
// means no configured limit.
type Config struct {
	KeyPrefix string
	// Account and Token are the ceilings; learned rates stay at or below them.
	Account, Token ratelimit.Limit
	// Headroom is the fraction of each limit left unused (default
	// ratelimit.DefaultHeadroom; negative for none).
	Headroom float64
	// TokenBurst lets the token's limit admit this many requests at once
	// before spacing them (default 1: evenly spaced).
	TokenBurst  int
	Lease       time.Duration
	MaxAdmitted int
	Batch       int
	// MaxLearnedInterval is the slowest rate learning may settle on, and the
	// longest a failing account's lane is held.
	MaxLearnedInterval time.Duration
	// AccountFailures is how many transient failures in a row hold an
	// account's lane (default DefaultAccountFailures).
	AccountFailures int
	// Shards is how many hash slots admission spreads the accounts over
	// (default 1; at most MaxShards). Zero follows the count recorded in
	// Redis (what producers and operator commands do); a worker names it and
	// records it with Configure. MaxAdmitted applies per shard.
	Shards int
}

// MaxShards bounds Config.Shards.
const MaxShards = 256

// Scheduler is the admission state in Redis. Safe for concurrent use.
type Scheduler struct {
	rdb    redis.UniversalClient
	c      Config
	prefix string
	now    func() time.Time // nil: Redis's clock

	mu     sync.Mutex
	shards []shard   // nil until known (Config.Shards 0: read from Redis, again after recheck)
	read   time.Time // when a count followed from Redis was read
	turn   atomic.Uint64
	demand map[int]int64 // shard -> accounts its last pass left ready
}

// shard is one hash slot's admission state.
type shard struct {
	key  string // the schedule's key; its hash tag routes every script call
	base string
}

// shardBase is the key prefix of shard i: shard 0 keeps the unsharded
// layout's tag, so going from one shard to several moves nothing of it.
func shardBase(prefix string, i int) string {
	if i == 0 {
		return prefix + ":{adm}:"
	}
	return prefix + ":{adm:" + strconv.Itoa(i) + "}:"
}

func makeShards(prefix string, n int) []shard {
	out := make([]shard, n)
	for i := range out {
		b := shardBase(prefix, i)
		out[i] = shard{key: b + "accts", base: b}
	}
	return out
}

// Option configures a Scheduler.
type Option func(*Scheduler)

// WithClock makes the scripts use now instead of Redis's clock (tests).
func WithClock(now func() time.Time) Option { return func(s *Scheduler) { s.now = now } }

// New returns a Scheduler on rdb.
func New(rdb redis.UniversalClient, c Config, opts ...Option) *Scheduler {
	if c.KeyPrefix == "" {
		c.KeyPrefix = "orgsync"
	}
	if c.Headroom == 0 {
		c.Headroom = ratelimit.DefaultHeadroom
	}
	if c.Headroom < 0 {
		c.Headroom = 0
	}
	if c.TokenBurst < 1 {
		c.TokenBurst = 1
	}
	if c.Lease <= 0 {
		c.Lease = DefaultLease
	}
	if c.MaxAdmitted <= 0 {
		c.MaxAdmitted = DefaultMaxAdmitted
	}
	if c.Batch <= 0 {
		c.Batch = DefaultBatch
	}
	if c.MaxLearnedInterval <= 0 {
		c.MaxLearnedInterval = DefaultMaxLearnedInterval
	}
	if c.AccountFailures <= 0 {
		c.AccountFailures = DefaultAccountFailures
	}
	s := &Scheduler{rdb: rdb, c: c, prefix: c.KeyPrefix}
	if c.Shards > 0 {
		s.shards = makeShards(c.KeyPrefix, min(c.Shards, MaxShards))
		s.c.Shards = len(s.shards)
	}
	for _, o := range opts {
		o(s)
	}
	return s
}

// ErrShards is returned (wrapped) when the shard count a worker names is not
// the one admission holds updates under.
var ErrShards = errors.New("admission's shard count differs")

// Configure records the worker's shard count in Redis, so that producers
// route by it. It refuses to change a count under which updates still wait:
// an account would then have updates in two shards, and its order and limits
// would no longer be one script's to keep. Drained, the count changes.
func (s *Scheduler) Configure(ctx context.Context) error {
	want := s.c.Shards
	if want <= 0 {
		return nil
	}
	had, err := s.recorded(ctx)
	if err != nil {
		return err
	}
	// Every shard of both counts is brought to want, each checked (empty, or
	// already want) and changed in one script call, so an add racing with
	// the change is either seen (refused) or refused itself for naming the
	// old count. Shard 0, whose count producers read, goes last: it is the
	// commit point, and a change cut short is completed by the next start.
	all := makeShards(s.prefix, max(had, want))
	for i := len(all) - 1; i >= 0; i-- {
		ok, err := s.call(ctx, all[i], "setshards", want).Int64()
		if err != nil {
			return fmt.Errorf("admission: record the shard count: %w", err)
		}
		if ok == 1 {
			continue
		}
		// Undo: the shards changed so far hold nothing yet.
		var undo error
		for _, sh := range all[i+1:] {
			undo = errors.Join(undo, s.call(ctx, sh, "setshards", had).Err())
		}
		return errors.Join(fmt.Errorf("%w: updates wait in admission, or accounts are held, under %d shard(s), and this worker "+
			"was started with %d: start it with --shards %d (ORGSYNC_SHARDS), or let those updates finish first (stop the "+
			"producers; enqueue stats shows 0 waiting) and then change it", ErrShards, had, want, had), undo)
	}
	return nil
}

// recorded reads the shard count in force (1 when none was ever recorded).
func (s *Scheduler) recorded(ctx context.Context) (int, error) {
	v, err := s.rdb.Get(ctx, shardBase(s.prefix, 0)+"shards").Result()
	if errors.Is(err, redis.Nil) {
		return 1, nil
	}
	if err != nil {
		return 0, fmt.Errorf("admission: read the shard count: %w", err)
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 || n > MaxShards {
		return 0, fmt.Errorf("admission: the shard count in Redis (%q) is not a number from 1 to %d", v, MaxShards)
	}
	return n, nil
}

// recheck is how long a shard count followed from Redis is trusted before
// it is read again (an add naming an old count is refused and re-routed at
// once; this bounds how long reads, holds and stats of a long-lived
// producer or operator process can lag a change).
const recheck = 30 * time.Second

// all returns the shards, reading their count from Redis when the
// configuration left it open: the first time, and every recheck after.
func (s *Scheduler) all(ctx context.Context) ([]shard, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.shards != nil && (s.c.Shards > 0 || time.Since(s.read) < recheck) {
		return s.shards, nil
	}
	n, err := s.recorded(ctx)
	if err != nil {
		return nil, err
	}
	s.shards, s.read = makeShards(s.prefix, n), time.Now()
	return s.shards, nil
}

// reload forgets a shard count read from Redis (an add was refused for it).
func (s *Scheduler) reload() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.c.Shards > 0 {
		return false
	}
	s.shards = nil
	return true
}

// known is the shards if their count is known yet (nil if not).
func (s *Scheduler) known() []shard {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.shards
}

// Shards is how many shards admission has.
func (s *Scheduler) Shards(ctx context.Context) (int, error) {
	sh, err := s.all(ctx)
	return len(sh), err
}

// ShardOf is the shard of account among n: FNV-1a of its id, mod n. The
// empty account (the API token) is shard 0's.
func ShardOf(account string, n int) int {
	if n <= 1 || account == "" {
		return 0
	}
	h := fnv.New32a()
	_, _ = h.Write([]byte(account))
	return int(h.Sum32() % uint32(n))
}

// shardAt is shard i, or an error when there is no such shard (a ticket or
// lease of a count no longer in force).
func (s *Scheduler) shardAt(ctx context.Context, i int) (shard, error) {
	all, err := s.all(ctx)
	if err != nil {
		return shard{}, err
	}
	if i < 0 || i >= len(all) {
		return shard{}, fmt.Errorf("admission: no shard %d of %d", i, len(all))
	}
	return all[i], nil
}

// of is the shard of account.
func (s *Scheduler) of(ctx context.Context, account string) (shard, error) {
	sh, err := s.all(ctx)
	if err != nil {
		return shard{}, err
	}
	return sh[ShardOf(account, len(sh))], nil
}

// Config returns the effective configuration.
func (s *Scheduler) Config() Config { return s.c }

// call runs op on one shard.
func (s *Scheduler) call(ctx context.Context, sh shard, op string, args ...any) *redis.Cmd {
	return script.Run(ctx, s.rdb, []string{sh.key}, s.args(op, args)...)
}

// run runs op on account's shard.
func (s *Scheduler) run(ctx context.Context, account, op string, args ...any) *redis.Cmd {
	sh, err := s.of(ctx, account)
	if err != nil {
		return failed(ctx, err)
	}
	return s.call(ctx, sh, op, args...)
}

// failed is a command that did not run.
func failed(ctx context.Context, err error) *redis.Cmd {
	cmd := redis.NewCmd(ctx)
	cmd.SetErr(err)
	return cmd
}

// runIn queues op on account's shard in pipe (by its SHA: LoadScript must
// have run).
func (s *Scheduler) runIn(ctx context.Context, pipe redis.Pipeliner, account, op string, args ...any) *redis.Cmd {
	sh, err := s.of(ctx, account)
	if err != nil {
		return failed(ctx, err)
	}
	return script.EvalSha(ctx, pipe, []string{sh.key}, s.args(op, args)...)
}

// each runs op on every shard in one round trip and returns each shard's answer.
func (s *Scheduler) each(ctx context.Context, op string, args ...any) ([]*redis.Cmd, error) {
	sh, err := s.all(ctx)
	if err != nil {
		return nil, err
	}
	return s.perShard(ctx, sh, op, func(int) ([]any, bool) { return args, true })
}

// perShard runs op on each shard for which argsOf gives arguments, all in
// one round trip (the script by its SHA, loaded if Redis does not know it);
// a shard given none has a nil command.
func (s *Scheduler) perShard(ctx context.Context, sh []shard, op string, argsOf func(k int) ([]any, bool)) ([]*redis.Cmd, error) {
	cmds := make([]*redis.Cmd, len(sh))
	_, err := redisconn.Pipelined(ctx, s.rdb, func(pipe redis.Pipeliner) {
		for k, x := range sh {
			if args, ok := argsOf(k); ok {
				cmds[k] = script.EvalSha(ctx, pipe, []string{x.key}, s.args(op, args)...)
			}
		}
	}, func(ctx context.Context) error { return LoadScript(ctx, s.rdb) })
	if err != nil {
		return nil, fmt.Errorf("admission: load script: %w", err)
	}
	return cmds, nil
}

func (s *Scheduler) args(op string, args []any) []any {
	now := int64(0)
	if s.now != nil {
		now = s.now().UnixMilli()
	}
	return append([]any{op, now}, args...)
}

// LoadScript loads admission's script into Redis, so that its operations can
// be queued in pipelines (the *In methods); a Redis restart forgets it.
func LoadScript(ctx context.Context, rdb redis.Scripter) error {
	return script.Load(ctx, rdb).Err()
}

// StartIn queues Start in pipe; the returned function reads its answer once
// the pipeline has run.
func (s *Scheduler) StartIn(ctx context.Context, pipe redis.Pipeliner, account, id string, gen int64, owner string) func() (Started, bool, error) {
	cmd := s.runIn(ctx, pipe, account, "start", id, gen, owner, s.c.Lease.Milliseconds())
	return func() (Started, bool, error) { return started(id, cmd) }
}

// FinishIn queues Finish in pipe.
func (s *Scheduler) FinishIn(ctx context.Context, pipe redis.Pipeliner, account, id string, gen int64) *redis.Cmd {
	return s.runIn(ctx, pipe, account, "finish", id, genArg(gen))
}

// LearnLimitIn queues LearnLimit in pipe.
func (s *Scheduler) LearnLimitIn(ctx context.Context, pipe redis.Pipeliner, account string, lim ratelimit.Limit) {
	if lim.IsZero() {
		return
	}
	ceiling, base := s.learnRates(account)
	s.runIn(ctx, pipe, account, "learn", account, "limit", s.intervalMS(ceiling), s.intervalMS(base),
		s.c.MaxLearnedInterval.Milliseconds(), s.intervalMS(lim))
}

// intervalMS is the spacing between requests under lim, headroom included,
// in milliseconds (0 for no limit).
func (s *Scheduler) intervalMS(lim ratelimit.Limit) float64 {
	if lim.IsZero() {
		return 0
	}
	return float64(lim.Window.Milliseconds()) / float64(lim.Requests) / (1 - s.c.Headroom)
}

// credit is the fraction of an interval of lim a late admitter may make up:
// what the headroom leaves room for in one window. Evenly spaced requests
// put Requests×(1-Headroom)+1 in a window at worst; the spare below
// Requests, less that one, may be made up, at most one interval.
func (s *Scheduler) credit(lim ratelimit.Limit) float64 {
	if lim.IsZero() {
		return 1
	}
	return max(0, min(1, float64(lim.Requests)*s.c.Headroom-1))
}

// Item is one update to admit.
type Item struct {
	ID      string // the update's task id
	Account string
	Org     string // the organization's ordering key (unique within the account)
	Queue   string
	// NotBefore is the earliest it may go (a scheduled update); zero for now.
	NotBefore time.Time
	Payload   []byte
	// Origin is the sequence number of the update's first enqueue, for a
	// replay (which joins the end of the line but keeps its age); 0 for a
	// new update, whose origin is its own sequence number.
	Origin int64
}

// Add puts the update in its account's lane, behind its organization's
// earlier updates. It returns the update's sequence number, or 0 when the id
// is already waiting, admitted or running (nothing is changed then).
func (s *Scheduler) Add(ctx context.Context, it Item) (int64, error) {
	seqs, err := s.add(ctx, []Item{it})
	if err != nil {
		return 0, fmt.Errorf("admission: add %s: %w", it.ID, err)
	}
	return seqs[0], nil
}

// AddMany adds items in order, as Add would one by one, and returns each
// one's sequence number (0: already in): one script call per shard, all in
// one round trip.
func (s *Scheduler) AddMany(ctx context.Context, items []Item) ([]int64, error) {
	if len(items) == 0 {
		return nil, nil
	}
	seqs, err := s.add(ctx, items)
	if err != nil {
		return nil, fmt.Errorf("admission: add %d updates: %w", len(items), err)
	}
	return seqs, nil
}

// add adds items; the items a shard refused for naming an old shard count
// (it changed since it was read) are routed again, once, under the count now
// in force; those already added keep their answers.
func (s *Scheduler) add(ctx context.Context, items []Item) ([]int64, error) {
	out := make([]int64, len(items))
	todo := make([]int, len(items))
	for i := range todo {
		todo[i] = i
	}
	for retried := false; ; retried = true {
		refused, err := s.addGroups(ctx, items, todo, out)
		if err == nil || !isShardsError(err) || retried || !s.reload() {
			return out, err
		}
		todo = refused
	}
}

func isShardsError(err error) bool {
	return err != nil && strings.HasPrefix(err.Error(), "SHARDS ")
}

// addGroups adds items[todo] with one addmany per shard, filling out; it
// returns the indexes a shard refused for the shard count, with that error.
// Items of one shard keep their order: an organization's updates are all of
// one account, so of one shard.
func (s *Scheduler) addGroups(ctx context.Context, items []Item, todo []int, out []int64) ([]int, error) {
	sh, err := s.all(ctx)
	if err != nil {
		return nil, err
	}
	n := strconv.Itoa(len(sh))
	groups := make([][]int, len(sh))
	for _, i := range todo {
		k := ShardOf(items[i].Account, len(sh))
		groups[k] = append(groups[k], i)
	}
	cmds, err := s.perShard(ctx, sh, "addmany", func(k int) ([]any, bool) {
		if len(groups[k]) == 0 {
			return nil, false
		}
		args := make([]any, 0, 1+7*len(groups[k]))
		args = append(args, n)
		for _, i := range groups[k] {
			it := items[i]
			args = append(args, it.ID, it.Account, it.Org, it.Queue, ms(it.NotBefore), it.Payload, it.Origin)
		}
		return args, true
	})
	if err != nil {
		return nil, err
	}
	var refused []int
	var refusal error
	for k, idx := range groups {
		if len(idx) == 0 {
			continue
		}
		seqs, err := cmds[k].Int64Slice()
		if isShardsError(err) {
			refused, refusal = append(refused, idx...), err
			continue
		}
		if err != nil {
			return nil, err
		}
		for j, i := range idx {
			out[i] = seqs[j]
		}
	}
	return refused, refusal
}

// Ticket is an admitted update: run it now.
type Ticket struct {
	ID      string
	Gen     int64 // the admission generation; a ticket of an older one is stale
	Queue   string
	Payload []byte
	// Shard is the admission shard it came from.
	Shard int
	// Probe marks the one update an open circuit lets through to test the upstream.
	Probe bool
}

// Never is the "next" of an Admit that found nothing waiting on a time.
var Never = time.Unix(0, 0).Add(math.MaxInt64 / 2)

// Admit admits up to Config.Batch updates that can be sent now, for owner (a
// process id, whose heartbeats keep their leases). It also says when to look
// again: now when more may be ready, the next slot or hold's end, or Never
// when only an enqueue, a finishing update, a worker starting an admitted
// update or an operator can change things (each of which wakes Wait).
func (s *Scheduler) Admit(ctx context.Context, owner string) ([]Ticket, time.Time, error) {
	sh, err := s.all(ctx)
	if err != nil {
		return nil, time.Time{}, err
	}
	var out []Ticket
	next := Never
	// Each call starts at the next shard, so that under the token's limit
	// the shards take its slots in turn.
	first := int((s.turn.Add(1) - 1) % uint64(len(sh)))
	for k := range sh {
		i := (first + k) % len(sh)
		ts, nx, err := s.admit(ctx, i, owner, s.c.Batch-len(out), false)
		if err != nil {
			return out, next, err
		}
		out = append(out, ts...)
		if nx.Before(next) {
			next = nx
		}
		if len(out) >= s.c.Batch {
			break
		}
	}
	return out, next, nil
}

// admit runs one admission pass of shard i for up to n updates (probe: the
// open circuit's one probe, which may come from a lane held for failures).
// With more than one shard the token's slots are taken from shard 0 first,
// and those the pass did not use are given back.
func (s *Scheduler) admit(ctx context.Context, i int, owner string, n int, probe bool) ([]Ticket, time.Time, error) {
	all, err := s.all(ctx)
	if err != nil {
		return nil, time.Time{}, err
	}
	sh, err := s.shardAt(ctx, i)
	if err != nil {
		return nil, time.Time{}, err
	}
	tiv := s.intervalMS(s.c.Token)
	var took tokens
	if len(all) > 1 {
		if took, err = s.takeTokens(ctx, all[0], i, n); err != nil {
			return nil, time.Time{}, err
		}
		if took.granted == 0 {
			return nil, took.next, nil
		}
		n, tiv = took.granted, -1
	}
	res, err := s.call(ctx, sh, "admit", n, s.c.MaxAdmitted, s.c.Lease.Milliseconds(),
		tiv, s.intervalMS(s.c.Account), s.c.TokenBurst, owner,
		s.credit(s.c.Token), s.credit(s.c.Account), probeArg(probe)).Slice()
	if err != nil {
		if took.granted > 0 {
			s.giveTokens(ctx, all[0], took, took.granted)
		}
		return nil, time.Time{}, fmt.Errorf("admission: admit: %w", err)
	}
	next := fromPlan(str(res[0]))
	if ready, ok := res[1].(int64); ok {
		s.setDemand(i, ready)
	}
	var out []Ticket
	for j := 2; j+3 < len(res); j += 4 {
		gen, _ := res[j+1].(int64)
		out = append(out, Ticket{ID: str(res[j]), Gen: gen, Queue: str(res[j+2]), Payload: []byte(str(res[j+3])), Shard: i})
	}
	if unused := took.granted - len(out); len(all) > 1 && unused > 0 {
		s.giveTokens(ctx, all[0], took, unused)
	}
	return out, next, nil
}

func probeArg(probe bool) string {
	if probe {
		return "1"
	}
	return "0"
}

// fromPlan reads a script's "when to look next" (Never for its NEVER).
func fromPlan(v string) time.Time {
	if f, err := strconv.ParseFloat(v, 64); err == nil && f < 1e14 {
		return time.UnixMicro(int64(f * 1000))
	}
	return Never
}

// tokens is what a tokens call took of the API token's schedule.
type tokens struct {
	granted int
	tat, iv string    // the schedule after it, to give slots back
	next    time.Time // when a slot is due, when none was granted
	shard   int
	demand  int64 // the shard's accounts ready at its last pass, as told
}

// takeTokens takes up to n of the token's due slots for shard i, in its
// fair share by the accounts its last pass left ready.
func (s *Scheduler) takeTokens(ctx context.Context, home shard, i, n int) (tokens, error) {
	t := tokens{shard: i, demand: s.demandOf(i)}
	res, err := s.call(ctx, home, "tokens", n, s.intervalMS(s.c.Token), s.c.TokenBurst, s.credit(s.c.Token),
		i, t.demand).Slice()
	if err == nil && len(res) < 4 {
		err = fmt.Errorf("an answer of %d values, not 4", len(res))
	}
	if err != nil {
		return tokens{}, fmt.Errorf("admission: take the token's slots: %w", err)
	}
	g, _ := res[0].(int64)
	t.granted, t.tat, t.iv, t.next = int(g), str(res[1]), str(res[2]), fromPlan(str(res[3]))
	return t, nil
}

// giveTokens gives back k unused slots; if it fails they are lost (the
// token sends less, never more).
func (s *Scheduler) giveTokens(ctx context.Context, home shard, t tokens, k int) {
	if t.iv == "0" || t.iv == "" {
		return
	}
	_ = s.call(ctx, home, "untokens", k, t.tat, t.iv, t.shard, t.demand, s.demandOf(t.shard)).Err()
}

// demandOf is how many accounts shard i's last pass left ready (1 before
// its first pass: it may have some).
func (s *Scheduler) demandOf(i int) int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	if d, ok := s.demand[i]; ok {
		return d
	}
	return 1
}

func (s *Scheduler) setDemand(i int, ready int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.demand == nil {
		s.demand = map[int]int64{}
	}
	s.demand[i] = ready
}

// Started is a claimed update's place in its organization's order.
type Started struct {
	// Held says the ticket was not claimed because its account was held or
	// parked after it was admitted: the update went back to its lane.
	Held bool
	// Seq is its place in its organization's line.
	Seq int64
	// Origin is the place of its first enqueue (a replay keeps it).
	Origin int64
}

// Start claims an admitted update for the worker owner is. It reports false
// for a stale ticket (the update was put back, or finished, since): the
// caller must not run it.
func (s *Scheduler) Start(ctx context.Context, account, id string, gen int64, owner string) (Started, bool, error) {
	return started(id, s.run(ctx, account, "start", id, gen, owner, s.c.Lease.Milliseconds()))
}

func started(id string, cmd *redis.Cmd) (Started, bool, error) {
	res, err := cmd.Int64Slice()
	if err != nil {
		return Started{}, false, fmt.Errorf("admission: start %s: %w", id, err)
	}
	if len(res) > 0 && res[0] == 2 {
		return Started{Held: true}, false, nil
	}
	if len(res) < 3 || res[0] != 1 {
		return Started{}, false, nil
	}
	return Started{Seq: res[1], Origin: res[2]}, true, nil
}

// Extend renews the leases owner holds on the running updates ids and
// returns those it no longer holds (finished, put back after its lease ran
// out, or not started by it).
func (s *Scheduler) Extend(ctx context.Context, shard int, owner string, ids []string) ([]string, error) {
	if len(ids) == 0 {
		return nil, nil
	}
	sh, err := s.shardAt(ctx, shard)
	if err != nil {
		return nil, err
	}
	args := []any{owner, s.c.Lease.Milliseconds()}
	for _, id := range ids {
		args = append(args, id)
	}
	lost, err := s.call(ctx, sh, "extend", args...).StringSlice()
	if err != nil {
		return nil, fmt.Errorf("admission: extend leases: %w", err)
	}
	return lost, nil
}

// Finish takes a completed or dead-lettered update out of admission; its
// organization's next update becomes ready. gen is the finishing run's
// generation (AnyGeneration when it is not known): a run whose update was
// put back and admitted again since finishes nothing. It reports whether the
// update was taken out. An empty account (a payload that could not be read)
// finishes the update in whichever shard holds it.
func (s *Scheduler) Finish(ctx context.Context, account, id string, gen int64) (bool, error) {
	return s.finish(ctx, account, id, gen)
}

// FinishAccepted is Finish for an update of account whose request was
// accepted, and learns that as Learn(Accepted) would, in the same call: the
// success path of every update, one script call instead of two.
func (s *Scheduler) FinishAccepted(ctx context.Context, account, id string, gen int64) (bool, error) {
	ceiling, base := s.learnRates(account)
	return s.finish(ctx, account, id, gen, Accepted.kind(), account, s.intervalMS(ceiling), s.intervalMS(base))
}

// finish runs the finish op, with learn after its id and generation.
func (s *Scheduler) finish(ctx context.Context, account, id string, gen int64, learn ...any) (bool, error) {
	args := append([]any{id, genArg(gen)}, learn...)
	var n int64
	var err error
	if account == "" {
		n, err = s.sum(ctx, "finish", args...)
	} else {
		n, err = s.run(ctx, account, "finish", args...).Int64()
	}
	if err != nil {
		return false, fmt.Errorf("admission: finish %s: %w", id, err)
	}
	return n > 0, nil
}

func genArg(gen int64) string {
	if gen == AnyGeneration {
		return ""
	}
	return strconv.FormatInt(gen, 10)
}

// AnyGeneration finishes an update whatever its generation.
const AnyGeneration = -1

// Unadmit puts an admitted update that could not be handed to the queue back
// in its lane, under a new generation. It reports false when gen is stale or
// the update was started meanwhile.
func (s *Scheduler) Unadmit(ctx context.Context, t Ticket) (bool, error) {
	id, gen := t.ID, t.Gen
	sh, err := s.shardAt(ctx, t.Shard)
	if err != nil {
		return false, fmt.Errorf("admission: unadmit %s: %w", id, err)
	}
	n, err := s.call(ctx, sh, "unadmit", id, gen).Int64()
	if err != nil {
		return false, fmt.Errorf("admission: unadmit %s: %w", id, err)
	}
	return n == 1, nil
}

// Retry puts a running update of generation gen back in its lane, to go
// again no earlier than notBefore. It reports false when gen is stale (the
// update was put back or finished meanwhile), changing nothing.
func (s *Scheduler) Retry(ctx context.Context, account, id string, gen int64, notBefore time.Time) (bool, error) {
	n, err := s.run(ctx, account, "retry", id, gen, ms(notBefore)).Int64()
	if err != nil {
		return false, fmt.Errorf("admission: retry %s: %w", id, err)
	}
	return n == 1, nil
}

// Hold makes the account's whole lane wait until until (a rate limit's
// reset), for reason (with the HTTP status that said so). A hold only ever
// extends.
func (s *Scheduler) Hold(ctx context.Context, account string, until time.Time, reason string, status int) error {
	if err := s.run(ctx, account, "hold", account, ms(until), reason, status).Err(); err != nil {
		return fmt.Errorf("admission: hold account %s: %w", account, err)
	}
	return nil
}

// Park freezes the account's lane until Resume. An empty account parks
// every account (the API token was rejected). A park keeps its first reason.
func (s *Scheduler) Park(ctx context.Context, account, reason string, status int) error {
	var err error
	if account == "" {
		err = eachErr(s.each(ctx, "park", account, reason, status))
	} else {
		err = s.run(ctx, account, "park", account, reason, status).Err()
	}
	if err != nil {
		return fmt.Errorf("admission: park account %q: %w", account, err)
	}
	return nil
}

// sum runs op on every shard and adds up their integer answers.
func (s *Scheduler) sum(ctx context.Context, op string, args ...any) (int64, error) {
	cmds, err := s.each(ctx, op, args...)
	if err != nil {
		return 0, err
	}
	var total int64
	for _, c := range cmds {
		n, err := c.Int64()
		if err != nil {
			return total, err
		}
		total += n
	}
	return total, nil
}

// eachErr is the first error of an each call.
func eachErr(cmds []*redis.Cmd, err error) error {
	if err != nil {
		return err
	}
	for _, c := range cmds {
		if c.Err() != nil && !errors.Is(c.Err(), redis.Nil) {
			return c.Err()
		}
	}
	return nil
}

// Resume lifts a park and any hold on the account ("" for the
// all-accounts park); its lane goes again at its limit. It reports whether
// there was one.
func (s *Scheduler) Resume(ctx context.Context, account string) (bool, error) {
	if account == "" {
		n, err := s.sum(ctx, "resume", account)
		if err != nil {
			return false, fmt.Errorf("admission: resume account %q: %w", account, err)
		}
		return n > 0, nil
	}
	n, err := s.run(ctx, account, "resume", account).Int64()
	if err != nil {
		return false, fmt.Errorf("admission: resume account %q: %w", account, err)
	}
	return n > 0, nil
}

// Feedback is what an answer taught about an account's real limit.
type Feedback int

// Kinds of feedback.
const (
	// Limited: a 429. The account's admitted rate halves, and where it hurt
	// is remembered; the other 429s of the same burst (answered while the
	// account is held, or before the halved interval passed) halve it no more.
	Limited Feedback = iota + 1
	// Accepted: a request that was not refused for rate. The rate grows back:
	// quickly to 85 % of where it last hurt, slowly past it, never above the
	// configured ceiling.
	Accepted
)

// Learn lowers or raises the account's admitted rate from an answer.
func (s *Scheduler) Learn(ctx context.Context, account string, fb Feedback) error {
	return s.learn(ctx, account, fb.kind(), 0)
}

func (fb Feedback) kind() string {
	if fb == Limited {
		return "limited"
	}
	return "ok"
}

// LearnLimit sets the account's admitted rate from a limit the upstream
// stated (Truto's ratelimit-limit header), when it is below the ceiling.
func (s *Scheduler) LearnLimit(ctx context.Context, account string, lim ratelimit.Limit) error {
	if lim.IsZero() {
		return nil
	}
	return s.learn(ctx, account, "limit", s.intervalMS(lim))
}

// Failed counts a transient failure of one of the account's requests; after
// Config.AccountFailures in a row (an accepted request resets the count) the
// account's whole lane waits, 1 s doubling with each further failure up to
// MaxLearnedInterval, rather than every update of a failing account trying
// and spending its budget. It returns the hold it set (0 for none).
func (s *Scheduler) Failed(ctx context.Context, account string) (time.Duration, error) {
	ms, err := s.run(ctx, account, "learn", account, "failed", 0, 1000, s.c.MaxLearnedInterval.Milliseconds(), s.c.AccountFailures).Int64()
	if err != nil {
		return 0, fmt.Errorf("admission: count a failure of account %s: %w", account, err)
	}
	return time.Duration(ms) * time.Millisecond, nil
}

// Scope says whose limit a 429 was.
type Scope int

// Scopes of a 429.
const (
	ScopeAccount Scope = iota // the integrated account's (Truto's per-account limit, or the provider's)
	ScopeToken                // the API token's: every account waits
)

// RateLimited settles a 429 for account: the account's lane (or, when the
// limit the answer states is above any account's, the token and so every
// lane) waits until until, and its learned rate drops to the stated limit, or
// to half. It says which it was.
func (s *Scheduler) RateLimited(ctx context.Context, account string, until time.Time, stated ratelimit.Limit, reason string, status int) (Scope, error) {
	if !stated.IsZero() && !s.c.Account.IsZero() && s.intervalMS(stated) < s.intervalMS(s.c.Account) {
		// Faster than any account may go: the token's limit.
		if err := s.Hold(ctx, "", until, reason, status); err != nil {
			return ScopeToken, err
		}
		return ScopeToken, s.learn(ctx, "", "limit", s.intervalMS(stated))
	}
	// Learn before holding: a 429 of an account already held is one of the
	// same burst and teaches nothing new.
	var err error
	if !stated.IsZero() {
		err = s.LearnLimit(ctx, account, stated)
	} else {
		err = s.Learn(ctx, account, Limited)
	}
	if herr := s.Hold(ctx, account, until, reason, status); herr != nil {
		return ScopeAccount, herr
	}
	return ScopeAccount, err
}

func (s *Scheduler) learn(ctx context.Context, account, kind string, value float64) error {
	ceiling, base := s.learnRates(account)
	err := s.run(ctx, account, "learn", account, kind, s.intervalMS(ceiling), s.intervalMS(base),
		s.c.MaxLearnedInterval.Milliseconds(), value).Err()
	if err != nil {
		return fmt.Errorf("admission: learn the rate of account %s: %w", account, err)
	}
	return nil
}

// learnRates are the ceiling and the starting point of account's learned
// rate ("" is the API token's).
func (s *Scheduler) learnRates(account string) (ceiling, base ratelimit.Limit) {
	ceiling, base = s.c.Account, s.c.Account
	if account == "" {
		ceiling, base = s.c.Token, s.c.Token
	}
	if base.IsZero() {
		base = ratelimit.DefaultAccountLimit
	}
	return ceiling, base
}

// Reap puts back up to max updates whose lease ran out, and returns how many.
func (s *Scheduler) Reap(ctx context.Context, max int) (int, error) {
	n, err := s.sum(ctx, "reap", max)
	if err != nil {
		return 0, fmt.Errorf("admission: reap expired leases: %w", err)
	}
	return int(n), nil
}

// reap puts back up to max updates of shard i whose lease ran out.
func (s *Scheduler) reap(ctx context.Context, i, max int) (int, error) {
	sh, err := s.shardAt(ctx, i)
	if err != nil {
		return 0, err
	}
	n, err := s.call(ctx, sh, "reap", max).Int64()
	if err != nil {
		return 0, fmt.Errorf("admission: reap expired leases: %w", err)
	}
	return int(n), nil
}

// minBlock is the shortest wait spent blocked in Redis.
const minBlock = 150 * time.Millisecond

// ClearFailures lifts every lane held for failures in a row: the circuit
// closed, so those failures were the upstream's, not their accounts'. It
// returns how many lanes it released.
func (s *Scheduler) ClearFailures(ctx context.Context) (int, error) {
	n, err := s.sum(ctx, "clearfails")
	if err != nil {
		return 0, fmt.Errorf("admission: clear failure holds: %w", err)
	}
	return int(n), nil
}

// Wake wakes one sleeping admitter of every shard (the circuit closed: the
// backlog may go).
func (s *Scheduler) Wake(ctx context.Context) error {
	all, err := s.all(ctx)
	if err != nil {
		return err
	}
	pipe := s.rdb.Pipeline()
	for _, sh := range all {
		pipe.LPush(ctx, sh.base+"notify", "1")
		pipe.LTrim(ctx, sh.base+"notify", 0, 0)
	}
	_, err = pipe.Exec(ctx)
	return err
}

// Wait blocks until an admitter of shard i is woken (work became ready
// sooner than planned, or an operator resumed an account) or d passed. It
// reports whether it was woken.
func (s *Scheduler) Wait(ctx context.Context, i int, d time.Duration) (bool, error) {
	if d <= 0 {
		return false, nil
	}
	if d < minBlock {
		// Redis ends a blocking wait on its own timer (hz 10: every 100 ms),
		// so a short wait sleeps here instead, and a wake-up meanwhile is
		// seen by the next pass, at most d later.
		t := time.NewTimer(d)
		defer t.Stop()
		select {
		case <-ctx.Done():
		case <-t.C:
		}
		return false, nil
	}
	// go-redis rounds BLPOP timeouts to whole seconds; Redis takes decimals.
	secs := strconv.FormatFloat(max(d.Seconds(), 0.001), 'f', 3, 64)
	sh, err := s.shardAt(ctx, i)
	if err != nil {
		return false, err
	}
	err = s.rdb.Do(ctx, "BLPOP", sh.base+"notify", secs).Err()
	switch {
	case errors.Is(err, redis.Nil):
		return false, nil
	case err != nil:
		return false, fmt.Errorf("admission: wait: %w", err)
	}
	return true, nil
}

// AccountState is where an account's updates stand in admission.
type AccountState struct {
	Account string `json:"account"`
	// Waiting is its updates in admission: waiting, admitted or running.
	Waiting int64 `json:"waiting"`
	// ReadyOrgs is how many of its organizations have an update ready to go.
	ReadyOrgs int64 `json:"ready_orgs"`
	// NextSlot is when its rate limit next allows a request.
	NextSlot time.Time `json:"next_slot,omitzero"`
	// NextAdmission is when it is scheduled to be served (zero: not scheduled:
	// nothing ready, or parked).
	NextAdmission time.Time `json:"next_admission,omitzero"`
	// LearnedRate is the rate admission holds it to below the configured one
	// (requests per second; 0: the configured rate).
	LearnedRate float64 `json:"learned_rate,omitempty"`
	// HeldUntil is the end of a rate-limit hold.
	HeldUntil time.Time `json:"held_until,omitzero"`
	// Parked is why it is parked ("" if not).
	Parked string `json:"parked,omitempty"`
}

// Account reads the account's admission state.
func (s *Scheduler) Account(ctx context.Context, account string) (AccountState, error) {
	res, err := s.run(ctx, account, "account", account).Slice()
	if err != nil {
		return AccountState{}, fmt.Errorf("admission: account %s: %w", account, err)
	}
	st := AccountState{Account: account, Parked: str(res[5])}
	st.Waiting, _ = strconv.ParseInt(str(res[0]), 10, 64)
	st.NextSlot = fromMS(str(res[1]))
	if iv, _ := strconv.ParseFloat(str(res[2]), 64); iv > s.intervalMS(s.c.Account) {
		st.LearnedRate = 1000 / iv
	}
	st.HeldUntil = fromMS(str(res[4]))
	st.ReadyOrgs, _ = res[6].(int64)
	st.NextAdmission = fromMS(str(res[7]))
	return st, nil
}

// Hold is a park or a rate-limit hold on an account.
type Hold struct {
	Kind       string    // "parked" or "rate_limited"
	Account    string    // "" for the all-accounts park
	Reason     string    //
	StatusCode int       //
	Since      time.Time //
	Until      time.Time // the end of a rate-limit hold; zero for a park
}

// Holds lists the holds in force: the all-accounts park, parked accounts,
// then accounts rate-limited until a time.
func (s *Scheduler) Holds(ctx context.Context) ([]Hold, error) {
	cmds, err := s.each(ctx, "holds")
	if err != nil {
		return nil, fmt.Errorf("admission: list holds: %w", err)
	}
	var parked, held []Hold
	for k, c := range cmds {
		res, err := c.StringSlice()
		if err != nil {
			return nil, fmt.Errorf("admission: list holds: %w", err)
		}
		for i := 0; i+5 < len(res); i += 6 {
			if res[i+1] == "" && k > 0 {
				continue // the all-accounts park is in every shard: shown once
			}
			status, _ := strconv.Atoi(res[i+3])
			h := Hold{Kind: res[i], Account: res[i+1], Reason: res[i+2], StatusCode: status,
				Since: fromMS(res[i+4]), Until: fromMS(res[i+5])}
			if h.Kind == "parked" {
				parked = append(parked, h)
			} else {
				held = append(held, h)
			}
		}
	}
	return append(parked, held...), nil
}

// UpdateState is where one update stands in admission.
type UpdateState struct {
	State     string // "waiting", "admitted" or "running"
	Gen       int64
	Account   string
	Seq       int64
	Origin    int64
	NotBefore time.Time
	// Ahead is how many updates of its organization go before it.
	Ahead   int64
	Queue   string
	Payload []byte
}

// Update reads the update's admission state; ok is false when admission does
// not hold it (never enqueued, or finished).
func (s *Scheduler) Update(ctx context.Context, id string) (st UpdateState, ok bool, err error) {
	cmds, err := s.each(ctx, "update", id)
	if err != nil {
		return UpdateState{}, false, fmt.Errorf("admission: update %s: %w", id, err)
	}
	var res []any
	for _, c := range cmds {
		r, err := c.Slice()
		if err != nil {
			return UpdateState{}, false, fmt.Errorf("admission: update %s: %w", id, err)
		}
		if len(r) >= 8 {
			res = r
			break
		}
	}
	if len(res) < 8 {
		return UpdateState{}, false, nil
	}
	st = UpdateState{State: str(res[0]), Account: str(res[2]), NotBefore: fromMS(str(res[5])), Queue: str(res[7])}
	if len(res) > 8 {
		st.Payload = []byte(str(res[8]))
	}
	st.Gen, _ = strconv.ParseInt(str(res[1]), 10, 64)
	st.Seq, _ = strconv.ParseInt(str(res[3]), 10, 64)
	st.Origin, _ = strconv.ParseInt(str(res[4]), 10, 64)
	st.Ahead, _ = res[6].(int64)
	return st, true, nil
}

// Place is one update in an organization's line.
type Place struct {
	ID          string
	Seq, Origin int64
}

// Line returns the organization's line, in order.
func (s *Scheduler) Line(ctx context.Context, account, org string) ([]Place, error) {
	res, err := s.run(ctx, account, "line", org).StringSlice()
	if err != nil {
		return nil, fmt.Errorf("admission: line of %s: %w", org, err)
	}
	var out []Place
	for i := 0; i+2 < len(res); i += 3 {
		seq, _ := strconv.ParseFloat(res[i+1], 64)
		og, _ := strconv.ParseFloat(res[i+2], 64)
		out = append(out, Place{ID: res[i], Seq: int64(seq), Origin: int64(og)})
	}
	return out, nil
}

// Stats is admission as a whole.
type Stats struct {
	// Shards is how many shards admission has.
	Shards int `json:"shards"`
	// Scheduled is the accounts with an update ready or waiting on a slot or hold.
	Scheduled int64 `json:"scheduled_accounts"`
	// Admitted is the updates handed to the queue and not yet started.
	Admitted int64 `json:"admitted"`
	// Running is the updates a worker has started.
	Running int64 `json:"running"`
	// Parked is how many accounts are parked.
	Parked int64 `json:"parked_accounts"`
	// AllParked is why every account is parked ("" if not).
	AllParked string `json:"all_parked,omitempty"`
	// Next is when the next scheduled account may send (zero: none).
	Next time.Time `json:"next,omitzero"`
}

// Stats reads admission as a whole.
func (s *Scheduler) Stats(ctx context.Context) (Stats, error) {
	cmds, err := s.each(ctx, "stats")
	if err != nil {
		return Stats{}, fmt.Errorf("admission: stats: %w", err)
	}
	st := Stats{Shards: len(cmds)}
	for k, c := range cmds {
		res, err := c.Slice()
		if err != nil {
			return Stats{}, fmt.Errorf("admission: stats: %w", err)
		}
		if k == 0 {
			st.AllParked = str(res[4])
		}
		if next := fromMS(str(res[5])); !next.IsZero() && (st.Next.IsZero() || next.Before(st.Next)) {
			st.Next = next
		}
		for i, f := range []*int64{&st.Scheduled, &st.Admitted, &st.Running, &st.Parked} {
			n, _ := res[i].(int64)
			*f += n
		}
	}
	return st, nil
}

func ms(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixMilli()
}

func fromMS(v string) time.Time {
	f, err := strconv.ParseFloat(v, 64)
	if err != nil || f <= 0 || f >= 1e14 {
		return time.Time{}
	}
	return time.UnixMicro(int64(f * 1000)).UTC()
}

func str(v any) string {
	switch v := v.(type) {
	case string:
		return v
	case int64:
		return strconv.FormatInt(v, 10)
	}
	return ""
}

// States returns the admission state of each update ("waiting", "admitted"
// or "running"; "" when admission does not hold it), in one round trip.
func (s *Scheduler) States(ctx context.Context, ids []string) ([]string, error) {
	all, err := s.all(ctx)
	if err != nil {
		return nil, err
	}
	pipe := s.rdb.Pipeline()
	cmds := make([][]*redis.StringCmd, len(all))
	for k, sh := range all {
		cmds[k] = make([]*redis.StringCmd, len(ids))
		for i, id := range ids {
			cmds[k][i] = pipe.HGet(ctx, sh.base+"upd:"+id, "state")
		}
	}
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
		return nil, fmt.Errorf("admission: states: %w", err)
	}
	out := make([]string, len(ids))
	for k := range all {
		for i, c := range cmds[k] {
			if v := c.Val(); v != "" {
				out[i] = v
			}
		}
	}
	return out, nil
}
