package tasks

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/hibiken/asynq"
)

// DefaultQueue is the asynq queue updates go to unless told otherwise.
const DefaultQueue = "orgsync"

// DefaultTaskTimeout bounds one run of the handler (asynq's Timeout option):
// one attempt plus its bookkeeping, well under asynq's 30-minute default.
const DefaultTaskTimeout = 5 * time.Minute

// asynqMaxRetry is the retry limit asynq itself sees. The handler keeps each
// update's real budget in the ledger, so that a worker crash (which asynq counts
// as a retry) never spends it and asynq never archives an update on its own;
// this number only has to be out of reach.
const asynqMaxRetry = 1_000_000

// ErrDuplicate means an update with the same idempotency key was already
// enqueued (waiting, running, completed within the result retention, or dead).
var ErrDuplicate = errors.New("duplicate: an update with this idempotency key already exists")

// Producer enqueues updates: each joins its account's lane in admission,
// behind its organization's earlier updates, and reaches asynq's queue when
// it can be sent. It is safe for concurrent use.
type Producer struct {
	store *Store
	now   func() time.Time
	// The queue used when an enqueue names none.
	queue string
}

// ProducerOption configures a Producer.
type ProducerOption func(*Producer)

// WithDefaultQueue sets the queue used when an enqueue names none (default DefaultQueue).
func WithDefaultQueue(q string) ProducerOption { return func(p *Producer) { p.queue = q } }

// WithProducerClock injects the clock (tests).
func WithProducerClock(now func() time.Time) ProducerOption {
	return func(p *Producer) { p.now = now }
}

// NewProducer returns a Producer that enqueues through the store's Redis connection.
func NewProducer(store *Store, opts ...ProducerOption) *Producer {
	p := &Producer{store: store, now: time.Now, queue: DefaultQueue}
	for _, o := range opts {
		o(p)
	}
	return p
}

// Close releases the producer; the Redis connection belongs to the caller.
func (p *Producer) Close() error { return nil }

// EnqueueOption adjusts one enqueue.
type EnqueueOption func(*enqueueConfig)

type enqueueConfig struct {
	queue     string
	maxRetry  int
	processAt time.Time
	run       string
	line      int64 // the update's line in its run (0: the next free one)
}

// InQueue sends the update to queue q.
func InQueue(q string) EnqueueOption { return func(c *enqueueConfig) { c.queue = q } }

// WithMaxRetry sets the update's retry budget (0: the worker's default).
func WithMaxRetry(n int) EnqueueOption { return func(c *enqueueConfig) { c.maxRetry = n } }

// At delays the update's first attempt until t.
func At(t time.Time) EnqueueOption { return func(c *enqueueConfig) { c.processAt = t } }

// InRun adds the update to run name (see Runs): the run records its
// line and counts its end. A run is done once sealed (Runs.Seal) and every
// update in it has ended. The run records the line before admission takes the
// update: when Enqueue fails with a Redis error, enqueue the same update again
// (same key), or the run waits for it (its line shows as StatusNotQueued).
func InRun(name string) EnqueueOption { return func(c *enqueueConfig) { c.run = name } }

// AtLine sets the update's line number in its run (a bulk file's line); by
// default it takes the run's next line. An update already in the run keeps
// its first line; a line that held another update now holds this one.
func AtLine(n int64) EnqueueOption { return func(c *enqueueConfig) { c.line = n } }

// Enqueued describes an accepted (or duplicate) update.
type Enqueued struct {
	TaskID         string        `json:"task_id"`
	IdempotencyKey string        `json:"idempotency_key"`
	Queue          string        `json:"queue"`
	Status         EnqueueStatus `json:"status"`
}

// Enqueue validates u and puts it on the queue. An update without a key gets
// a fresh random one. A second enqueue of the same key returns the first one's
// identity with an error that matches ErrDuplicate, and enqueues nothing.
// Invalid input returns a *ValidationError and touches nothing.
func (p *Producer) Enqueue(ctx context.Context, u Update, opts ...EnqueueOption) (Enqueued, error) {
	if err := u.Validate(); err != nil {
		return Enqueued{}, err
	}
	cfg := enqueueConfig{queue: p.queue}
	for _, o := range opts {
		o(&cfg)
	}
	if cfg.maxRetry < 0 {
		return Enqueued{}, &ValidationError{Field: "max_retry", Reason: "must not be negative"}
	}
	if cfg.run != "" {
		if err := ValidateRunName(cfg.run); err != nil {
			return Enqueued{}, err
		}
	}
	if cfg.line < 0 {
		return Enqueued{}, &ValidationError{Field: "line", Reason: "must not be negative"}
	}
	if u.IdempotencyKey == "" {
		u.IdempotencyKey = NewKey()
	}
	// The wall-clock budget starts when the update is due, not when it was
	// scheduled: an update scheduled for next week must not expire on arrival.
	start := p.now().UTC()
	if cfg.processAt.After(start) {
		start = cfg.processAt.UTC()
	}
	return p.enqueue(ctx, Payload{Version: PayloadVersion, Update: u, EnqueuedAt: start, MaxRetry: cfg.maxRetry, Run: cfg.run}, cfg)
}

func (p *Producer) enqueue(ctx context.Context, pl Payload, cfg enqueueConfig) (Enqueued, error) {
	id := pl.TaskID()
	out := Enqueued{TaskID: id, IdempotencyKey: pl.IdempotencyKey, Queue: cfg.queue, Status: EnqueueAccepted}
	// Remembered so that `enqueue status KEY` finds the update by key alone.
	if err := p.store.ledger.noteKey(ctx, pl.IntegratedAccountID, pl.IdempotencyKey); err != nil {
		return Enqueued{}, fmt.Errorf("enqueue %s: %w", id, err)
	}
	// The run is named in the ledger record before the update's state is
	// read below: either the worker that ends it sees the run, or this
	// enqueue sees it ended (and counts it in the run itself).
	if cfg.run != "" {
		places, err := p.store.runs.addToRun(ctx, cfg.run, []runEntry{{line: cfg.line, taskID: id, key: pl.IdempotencyKey}})
		if err != nil {
			return Enqueued{}, fmt.Errorf("enqueue %s: %w", id, err)
		}
		if places[0].prior == runPurged {
			// Purged, and enqueued again: it waits in its run once more, from
			// before admission can hand it to a worker.
			if err := p.store.runs.setInRuns(ctx, id, []string{cfg.run}, runWaiting); err != nil {
				return Enqueued{}, fmt.Errorf("enqueue %s: %w", id, err)
			}
		}
	}
	out, err := p.admit(ctx, pl, cfg, out)
	if cfg.run != "" && errors.Is(err, ErrDuplicate) {
		if rerr := p.countEnded(ctx, out.TaskID, cfg.run); rerr != nil {
			return out, fmt.Errorf("enqueue %s: %w", id, rerr)
		}
	}
	return out, err
}

// countEnded counts an update that already ended (completed or dead) in run.
func (p *Producer) countEnded(ctx context.Context, id, run string) error {
	rec, err := p.store.ledger.Get(ctx, id)
	if err != nil {
		return err
	}
	switch {
	case rec.State == StatusCompleted:
		return p.store.runs.setInRuns(ctx, id, []string{run}, runCompleted)
	case rec.State == StatusDead || rec.DeadLettered:
		return p.store.runs.setInRuns(ctx, id, []string{run}, runDead)
	}
	return nil // still waiting or running: the worker that ends it counts it
}

// admit puts the update in admission unless it exists already.
func (p *Producer) admit(ctx context.Context, pl Payload, cfg enqueueConfig, out Enqueued) (Enqueued, error) {
	id := out.TaskID
	// A dead update keeps its identity until an operator replays or purges
	// it, even after asynq's capped archive has forgotten it; and an update
	// enqueued before keys belonged to accounts keeps its old identity.
	dup, dupID, dead, err := p.existing(ctx, pl, cfg.queue)
	if err != nil {
		return Enqueued{}, fmt.Errorf("enqueue %s: %w", id, err)
	}
	if dup {
		out.TaskID, out.Status = dupID, EnqueueDuplicate
		if dead {
			return out, fmt.Errorf("enqueue %s: %w (it is dead-lettered: replay it with `enqueue dlq replay %s`)", dupID, ErrDuplicate, dupID)
		}
		return out, fmt.Errorf("enqueue %s: %w", dupID, ErrDuplicate)
	}
	// Completed within the result retention: the ledger remembers it.
	if rec, err := p.store.ledger.Get(ctx, id); err != nil {
		return Enqueued{}, fmt.Errorf("enqueue %s: %w", id, err)
	} else if rec.State == StatusCompleted {
		out.Status = EnqueueDuplicate
		return out, fmt.Errorf("enqueue %s: %w (it has completed)", id, ErrDuplicate)
	}
	added, err := p.store.lines.add(ctx, pl, cfg.queue, cfg.processAt)
	if err != nil {
		return Enqueued{}, fmt.Errorf("enqueue %s: %w", id, err)
	}
	if !added { // waiting, admitted or running already
		out.Status = EnqueueDuplicate
		return out, fmt.Errorf("enqueue %s: %w", id, ErrDuplicate)
	}
	return out, nil
}

// existing reports whether the update already exists outside asynq's task id
// check: as a dead letter under its task id, or as a version-1 task (queued,
// completed within the retention, or dead) of the same account under the
// key's legacy id. It returns the id it exists under, and whether it is dead.
func (p *Producer) existing(ctx context.Context, pl Payload, queue string) (dup bool, id string, dead bool, err error) {
	id, legacy := pl.TaskID(), LegacyTaskID(pl.IdempotencyKey)
	pipe := p.store.rdb.Pipeline()
	deadNow := p.store.dead.deadIn(ctx, pipe, id)
	deadOld := p.store.dead.deadIn(ctx, pipe, legacy)
	// asynq 0.26 keeps a task's hash at asynq:{QUEUE}:t:ID; TestLegacyPayloadKeepsItsIdentity
	// fails if that changes.
	queuedOld := pipe.Exists(ctx, "asynq:{"+queue+"}:t:"+legacy)
	if _, err := pipe.Exec(ctx); err != nil {
		return false, "", false, fmt.Errorf("check dead letters: %w", err)
	}
	switch {
	case deadNow.Val():
		return true, id, true, nil
	case legacy == id || (!deadOld.Val() && queuedOld.Val() == 0):
		return false, "", false, nil // the common case: no version-1 task with this key
	}
	// A version-1 task has this key; it is this update only if it is the same account's.
	if deadOld.Val() {
		d, err := p.store.dead.Get(ctx, legacy)
		if err != nil && !errors.Is(err, ErrNotFound) {
			return false, "", false, err
		}
		if err == nil && d.Update.IntegratedAccountID == pl.IntegratedAccountID {
			return true, legacy, true, nil
		}
	}
	if queuedOld.Val() > 0 {
		info, err := p.store.ins.GetTaskInfo(queue, legacy)
		switch {
		case errors.Is(err, asynq.ErrTaskNotFound) || errors.Is(err, asynq.ErrQueueNotFound):
		case err != nil:
			return false, "", false, fmt.Errorf("look up %s: %w", legacy, err)
		default:
			if old, err := DecodePayload(info.Payload); err == nil && old.Version == payloadV1 &&
				old.IntegratedAccountID == pl.IntegratedAccountID {
				return true, legacy, info.State == asynq.TaskStateArchived, nil
			}
		}
	}
	return false, "", false, nil
}
