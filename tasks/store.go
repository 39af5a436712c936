package tasks

import (
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/orgsync/orgsync/internal/admission"
)

// Store holds orgsync's own records in Redis: the per-update ledger and
// attempt history, the dead letters, and (through admission) the updates
// waiting to be sent and the account holds. Every key starts with
// the prefix, and keys that one script touches share a hash tag so that Redis
// Cluster keeps them in one slot.
//
// Its accessors return its parts, each owning some of the records (see the
// package doc). The parts share the store's connection and configuration,
// and are built once, by NewStore: getting one costs nothing.
type Store struct {
	*base
}

// Ledger returns the per-update ledger: state, retry budget, attempt history
// and result.
func (s *Store) Ledger() *Ledger { return &s.ledger }

// Accounts returns the account holds.
func (s *Store) Accounts() *Accounts { return &s.accounts }

// DeadLetters returns the dead-letter store.
func (s *Store) DeadLetters() *DeadLetters { return &s.dead }

// Runs returns the runs: named sets of updates enqueued together.
func (s *Store) Runs() *Runs { return &s.runs }

// Events returns the outcome stream.
func (s *Store) Events() *Events { return &s.events }

// Lines returns the organizations' lines: the order an organization's
// updates apply in.
func (s *Store) Lines() *Lines { return &s.lines }

// Operator returns what an operator does across the parts: status, stats,
// replay and purge (the CLI and the admin API both use it).
func (s *Store) Operator() *Operator { return &s.op }

// Scheduler returns the store's admission state.
func (s *Store) Scheduler() *admission.Scheduler { return s.adm }

// base is what every part of the store shares: the client, the key prefix,
// the retention, the clock, the admission scheduler and asynq's inspector,
// each set once by NewStore.
type base struct {
	rdb         redis.UniversalClient
	prefix      string
	ttl         time.Duration
	maxAttempts int
	now         func() time.Time
	adm         *admission.Scheduler
	// eventsMaxLen caps the outcome stream (0: no events).
	eventsMaxLen int64
	// ins reads asynq's queues (built once; the operator's paths and the
	// rare legacy checks use it).
	ins *asynq.Inspector

	// The parts, each a view of this base: a part reaches another through
	// these (s.ledger, s.dead, ...), the handler and the producer through
	// the Store that embeds the base.
	ledger   Ledger
	accounts Accounts
	dead     DeadLetters
	runs     Runs
	events   Events
	lines    Lines
	op       Operator
}

// StoreOption configures a Store.
type StoreOption func(*Store)

// WithResultTTL sets how long results and ledger entries live (default DefaultResultTTL).
func WithResultTTL(d time.Duration) StoreOption { return func(s *Store) { s.ttl = d } }

// WithKeyPrefix sets the Redis key prefix (default "orgsync").
func WithKeyPrefix(p string) StoreOption { return func(s *Store) { s.prefix = p } }

// WithClock injects the clock (tests).
func WithClock(now func() time.Time) StoreOption { return func(s *Store) { s.now = now } }

// WithScheduler makes the store use s for admission (the worker's, with its
// rate limits); by default it builds one with no limits, which is all that
// enqueueing, operator commands and status need.
func WithScheduler(a *admission.Scheduler) StoreOption { return func(s *Store) { s.adm = a } }

// WithMaxAttemptsKept bounds each update's attempt history (default DefaultMaxAttemptsKept).
func WithMaxAttemptsKept(n int) StoreOption { return func(s *Store) { s.maxAttempts = n } }

// NewStore returns a Store on rdb.
func NewStore(rdb redis.UniversalClient, opts ...StoreOption) *Store {
	s := &Store{&base{rdb: rdb, prefix: "orgsync", ttl: DefaultResultTTL, maxAttempts: DefaultMaxAttemptsKept, now: time.Now,
		eventsMaxLen: DefaultEventsMaxLen}}
	for _, o := range opts {
		o(s)
	}
	if s.adm == nil {
		s.adm = admission.New(rdb, admission.Config{KeyPrefix: s.prefix})
	}
	s.ins = asynq.NewInspectorFromRedisClient(rdb)
	b := s.base
	b.ledger, b.accounts, b.dead, b.runs = Ledger{b}, Accounts{b}, DeadLetters{b}, Runs{b}
	b.events, b.lines, b.op = Events{b}, Lines{b}, Operator{b}
	return s
}
