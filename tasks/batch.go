package tasks

import (
	"context"
	"errors"
	"fmt"

	"github.com/redis/go-redis/v9"

	"github.com/orgsync/orgsync/internal/admission"
)

// DefaultBatchSize is how many updates EnqueueLines and EnqueueMany send to
// Redis per batch.
const DefaultBatchSize = 500

// Line is one update of a batch, with its line number in its run (a bulk
// file's line; 0 takes the run's next free line).
type Line struct {
	No     int64
	Update Update
}

// EnqueueMany enqueues updates in slice order with the same options, as
// EnqueueLines does, and returns one result and one error per update.
func (p *Producer) EnqueueMany(ctx context.Context, updates []Update, opts ...EnqueueOption) ([]Enqueued, []error) {
	lines := make([]Line, len(updates))
	for i, u := range updates {
		lines[i] = Line{Update: u}
	}
	return p.EnqueueLines(ctx, lines, opts...)
}

// EnqueueLines enqueues lines in order, DefaultBatchSize at a time, each
// batch in a fixed handful of Redis round trips whatever its size. It returns
// one result and one error per line, in order: errs[i] is nil, a
// *ValidationError, an error matching ErrDuplicate (results[i] then names
// the existing update), or a Redis error (which fails the rest of its batch
// and every later one). Updates to one organization apply in slice order.
func (p *Producer) EnqueueLines(ctx context.Context, lines []Line, opts ...EnqueueOption) ([]Enqueued, []error) {
	results := make([]Enqueued, len(lines))
	errs := make([]error, len(lines))
	cfg := enqueueConfig{queue: p.queue}
	for _, o := range opts {
		o(&cfg)
	}
	var cerr error
	switch {
	case cfg.maxRetry < 0:
		cerr = &ValidationError{Field: "max_retry", Reason: "must not be negative"}
	case cfg.run != "":
		cerr = ValidateRunName(cfg.run)
	}
	for from := 0; from < len(lines); from += DefaultBatchSize {
		to := min(from+DefaultBatchSize, len(lines))
		if cerr != nil {
			for i := from; i < to; i++ {
				errs[i] = cerr
			}
			continue
		}
		if err := p.enqueueBatch(ctx, lines[from:to], cfg, results[from:to], errs[from:to]); err != nil {
			cerr = err // Redis failed: so would every later batch
			for i := from; i < to; i++ {
				if errs[i] == nil && results[i].Status == "" {
					errs[i] = err
				}
			}
		}
	}
	return results, errs
}

// pending is one valid line of a batch on its way in.
type pending struct {
	i       int // index in the batch
	pl      Payload
	id      string
	payload []byte
	// what Redis said of its id before the enqueue
	dead, legacy *redis.BoolCmd
	queuedOld    *redis.IntCmd
	state        *redis.StringCmd
}

// enqueueBatch enqueues one batch: validation and hashing first, then (with
// a run) the run's lines in one script call, then one pipelined round trip
// for the run's name in the ledger records, the key index and the duplicate
// checks, then admission in one script call. It fills results and errs, and
// returns a Redis error that stopped it.
func (p *Producer) enqueueBatch(ctx context.Context, lines []Line, cfg enqueueConfig, results []Enqueued, errs []error) error {
	start := p.now().UTC()
	if cfg.processAt.After(start) {
		start = cfg.processAt.UTC()
	}
	var todo []*pending
	for i, l := range lines {
		u := l.Update
		if err := u.Validate(); err != nil {
			errs[i] = err
			continue
		}
		if l.No < 0 {
			errs[i] = &ValidationError{Field: "line", Reason: "must not be negative"}
			continue
		}
		if u.IdempotencyKey == "" {
			u.IdempotencyKey = NewKey()
		}
		pl := Payload{Version: PayloadVersion, Update: u, EnqueuedAt: start, MaxRetry: cfg.maxRetry, Run: cfg.run}
		b, err := EncodePayload(pl)
		if err != nil {
			errs[i] = fmt.Errorf("encode payload: %w", err)
			continue
		}
		id := pl.TaskID()
		results[i] = Enqueued{TaskID: id, IdempotencyKey: u.IdempotencyKey, Queue: cfg.queue}
		todo = append(todo, &pending{i: i, pl: pl, id: id, payload: b})
	}
	if len(todo) == 0 {
		return nil
	}
	pipe := p.store.rdb.Pipeline()
	if cfg.run != "" {
		entries, err := p.addLinesToRun(ctx, cfg.run, lines, todo)
		if err != nil {
			return err
		}
		// The run is named in each ledger record before its state is read
		// below, in the same round trip (one key: in order): see Enqueue.
		p.store.runs.nameRunIn(ctx, pipe, cfg.run, entries)
	}
	for _, t := range todo {
		k := p.store.ledger.keyIndexKey(t.pl.IdempotencyKey)
		pipe.SAdd(ctx, k, t.pl.IntegratedAccountID)
		pipe.Expire(ctx, k, p.store.ttl+DefaultMaxAge)
		t.dead = p.store.dead.deadIn(ctx, pipe, t.id)
		t.legacy = p.store.dead.deadIn(ctx, pipe, LegacyTaskID(t.pl.IdempotencyKey))
		t.queuedOld = pipe.Exists(ctx, "asynq:{"+cfg.queue+"}:t:"+LegacyTaskID(t.pl.IdempotencyKey))
		t.state = pipe.HGet(ctx, p.store.ledger.recKey(t.id), "state")
	}
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
		return fmt.Errorf("enqueue: record and check %d updates: %w", len(todo), err)
	}
	ended := map[string]string{} // duplicates that already ended, for the run
	var items []admission.Item
	var admitting []*pending
	for _, t := range todo {
		switch {
		case t.dead.Val():
			p.duplicate(results, errs, t, fmt.Errorf("enqueue %s: %w (it is dead-lettered: replay it with `enqueue dlq replay %s`)", t.id, ErrDuplicate, t.id))
			ended[t.id] = runDead
			continue
		case t.legacy.Val() || t.queuedOld.Val() > 0:
			// A version-1 update may have this key: the careful, rare path.
			dup, dupID, dead, err := p.existing(ctx, t.pl, cfg.queue)
			if err != nil {
				return err
			}
			if dup {
				results[t.i].TaskID = dupID
				msg := fmt.Errorf("enqueue %s: %w", dupID, ErrDuplicate)
				if dead {
					msg = fmt.Errorf("enqueue %s: %w (it is dead-lettered: replay it with `enqueue dlq replay %s`)", dupID, ErrDuplicate, dupID)
				}
				p.duplicate(results, errs, t, msg)
				continue
			}
		}
		if State(t.state.Val()) == StatusCompleted {
			p.duplicate(results, errs, t, fmt.Errorf("enqueue %s: %w (it has completed)", t.id, ErrDuplicate))
			ended[t.id] = runCompleted
			continue
		}
		items = append(items, admission.Item{ID: t.id, Account: t.pl.IntegratedAccountID, Org: orgKey(t.pl.Update),
			Queue: cfg.queue, NotBefore: cfg.processAt, Payload: t.payload})
		admitting = append(admitting, t)
	}
	seqs, err := p.store.adm.AddMany(ctx, items)
	if err != nil {
		return err
	}
	for j, t := range admitting {
		if seqs[j] == 0 { // waiting, admitted or running already
			p.duplicate(results, errs, t, fmt.Errorf("enqueue %s: %w", t.id, ErrDuplicate))
			continue
		}
		results[t.i].Status = EnqueueAccepted
	}
	if cfg.run != "" {
		return p.store.runs.setRunStates(ctx, cfg.run, ended)
	}
	return nil
}

func (p *Producer) duplicate(results []Enqueued, errs []error, t *pending, err error) {
	results[t.i].Status, errs[t.i] = EnqueueDuplicate, err
}

// addLinesToRun records the batch's lines in run, in one script call, and
// sets back to waiting those it held as purged (enqueued again after a
// purge). It returns the entries, whose ledger records the caller then names
// the run in.
func (p *Producer) addLinesToRun(ctx context.Context, run string, lines []Line, todo []*pending) ([]runEntry, error) {
	entries := make([]runEntry, len(todo))
	for j, t := range todo {
		entries[j] = runEntry{line: lines[t.i].No, taskID: t.id, key: t.pl.IdempotencyKey}
	}
	places, err := p.store.runs.addRunLines(ctx, run, entries)
	if err != nil {
		return nil, err
	}
	again := map[string]string{}
	for j, pl := range places {
		if pl.prior == runPurged {
			again[todo[j].id] = runWaiting
		}
	}
	return entries, p.store.runs.setRunStates(ctx, run, again)
}
