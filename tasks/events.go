package tasks

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// Every update that ends (completed or dead) and every run that becomes done
// appends one entry to a Redis Stream, capped at about EventsMaxLen entries
// (XADD MAXLEN ~). A service learns outcomes from it without polling: with a
// consumer group (EventReader) it reads each entry at least once, across
// restarts. An entry carries ids, state, status and timing; never the API
// token, never a body (the stored result is one `enqueue status` away). An
// entry can come twice: a worker that stops after writing it and before
// finishing the update writes it again on the next run.

// DefaultEventsMaxLen is about how many outcome events the stream keeps.
const DefaultEventsMaxLen = 100_000

// Types of outcome event.
const (
	EventCompleted = "completed" // an update was applied; its result is stored
	EventDead      = "dead"      // an update was dead-lettered
	EventRunDone   = "run_done"  // every update of a sealed run has ended
)

// OutcomeEvent is one entry of the outcome stream.
type OutcomeEvent struct {
	// ID is the stream entry's id (milliseconds-sequence), the position to
	// read on from.
	ID   string    `json:"id"`
	Type string    `json:"type"`
	At   time.Time `json:"at"`

	// Of an update (completed, dead).
	TaskID         string    `json:"task_id,omitempty"`
	IdempotencyKey string    `json:"idempotency_key,omitempty"`
	Account        string    `json:"integrated_account_id,omitempty"`
	Organization   string    `json:"organization_id,omitempty"`
	Runs           []string  `json:"runs,omitempty"`
	StatusCode     int       `json:"status_code,omitempty"`
	Class          Class     `json:"class,omitempty"`
	Reason         string    `json:"reason,omitempty"`
	Attempts       int       `json:"attempts,omitempty"`
	EnqueuedAt     time.Time `json:"enqueued_at,omitzero"`

	// Of a run (run_done).
	Run       string `json:"run,omitempty"`
	Total     int64  `json:"total,omitempty"`
	Completed int64  `json:"completed,omitempty"`
	Dead      int64  `json:"dead,omitempty"`
	Purged    int64  `json:"purged,omitempty"`
}

// InRun reports whether the event is about run name: its run_done, or an
// update of it.
func (e OutcomeEvent) InRun(name string) bool {
	if e.Run == name {
		return true
	}
	for _, r := range e.Runs {
		if r == name {
			return true
		}
	}
	return false
}

// WithEventsMaxLen caps the outcome stream at about n entries (default
// DefaultEventsMaxLen); 0 writes no events.
func WithEventsMaxLen(n int64) StoreOption { return func(s *Store) { s.eventsMaxLen = n } }

// Events is the outcome stream (Store.Events): the handler and the runs
// append to it; Read, Count, LastID and NewReader read it.
type Events struct{ *base }

// Key is the Redis key of the outcome stream.
func (s *Events) Key() string { return s.prefix + ":{events}:outcomes" }

// emit appends e to the outcome stream.
func (s *Events) emit(ctx context.Context, e OutcomeEvent) error {
	if s.eventsMaxLen <= 0 {
		return nil
	}
	err := s.rdb.XAdd(ctx, s.eventArgs(e)).Err()
	if err != nil {
		return fmt.Errorf("write outcome event: %w", err)
	}
	return nil
}

// eventArgs appends e to the capped outcome stream.
func (s *Events) eventArgs(e OutcomeEvent) *redis.XAddArgs {
	return &redis.XAddArgs{Stream: s.Key(), MaxLen: s.eventsMaxLen, Approx: true, Values: e.fields()}
}

// endIn queues in pipe what an update's end writes besides the ledger: its
// outcome event, then its state in each of its runs. Each part is safe to
// repeat. The returned function, once the pipeline has run, names the runs
// the update made done (their run_done events are still to be written).
func (s *Events) endIn(ctx context.Context, pipe redis.Pipeliner, e OutcomeEvent, runs []string) func() []string {
	e.Runs = runs
	if s.eventsMaxLen > 0 {
		pipe.XAdd(ctx, s.eventArgs(e))
	}
	state := runCompleted
	if e.Type == EventDead {
		state = runDead
	}
	cmds := make([]*redis.Cmd, len(runs))
	for i, name := range runs {
		cmds[i] = s.runs.runCallIn(ctx, pipe, name, "set", e.TaskID, state)
	}
	return func() []string {
		var done []string
		for i, c := range cmds {
			if res, err := c.Int64Slice(); err == nil && len(res) == 2 && res[1] == 1 {
				done = append(done, runs[i])
			}
		}
		return done
	}
}

func (e OutcomeEvent) fields() map[string]any {
	f := map[string]any{"type": e.Type, "at": e.At.UnixMilli()}
	put := func(k, v string) {
		if v != "" {
			f[k] = v
		}
	}
	putInt := func(k string, v int64) {
		if v != 0 {
			f[k] = v
		}
	}
	put("task_id", e.TaskID)
	put("key", e.IdempotencyKey)
	put("account", e.Account)
	put("org", e.Organization)
	if len(e.Runs) > 0 {
		b, _ := json.Marshal(e.Runs)
		f["runs"] = string(b)
	}
	putInt("status", int64(e.StatusCode))
	put("class", string(e.Class))
	put("reason", e.Reason)
	putInt("attempts", int64(e.Attempts))
	if !e.EnqueuedAt.IsZero() {
		f["enqueued"] = e.EnqueuedAt.UnixMilli()
	}
	put("run", e.Run)
	putInt("total", e.Total)
	putInt("completed", e.Completed)
	putInt("dead", e.Dead)
	putInt("purged", e.Purged)
	return f
}

// eventOf reads a stream entry; unknown fields are ignored, so that newer
// writers do not break older readers.
func eventOf(m redis.XMessage) OutcomeEvent {
	s := func(k string) string { v, _ := m.Values[k].(string); return v }
	n := func(k string) int64 { v, _ := strconv.ParseInt(s(k), 10, 64); return v }
	e := OutcomeEvent{ID: m.ID, Type: s("type"), At: msTime(s("at")), TaskID: s("task_id"), IdempotencyKey: s("key"),
		Account: s("account"), Organization: s("org"), StatusCode: int(n("status")), Class: Class(s("class")),
		Reason: s("reason"), Attempts: int(n("attempts")), EnqueuedAt: msTime(s("enqueued")), Run: s("run"),
		Total: n("total"), Completed: n("completed"), Dead: n("dead"), Purged: n("purged")}
	if r := s("runs"); r != "" {
		_ = json.Unmarshal([]byte(r), &e.Runs)
	}
	return e
}

// Read returns up to count events after position after ("" or "0":
// from the oldest kept). With block > 0 and nothing there yet, it waits up to
// block for new ones ("$" as after: only events appended from now on).
func (s *Events) Read(ctx context.Context, after string, count int64, block time.Duration) ([]OutcomeEvent, error) {
	if after == "" {
		after = "0"
	}
	var msgs []redis.XMessage
	if block > 0 {
		streams, err := s.rdb.XRead(ctx, &redis.XReadArgs{Streams: []string{s.Key(), after}, Count: count, Block: block}).Result()
		if errors.Is(err, redis.Nil) {
			return nil, nil
		}
		if err != nil {
			return nil, fmt.Errorf("read outcome events: %w", err)
		}
		for _, st := range streams {
			msgs = append(msgs, st.Messages...)
		}
	} else {
		from := "(" + after
		if after == "0" {
			from = "-"
		}
		var err error
		if msgs, err = s.rdb.XRangeN(ctx, s.Key(), from, "+", count).Result(); err != nil {
			return nil, fmt.Errorf("read outcome events: %w", err)
		}
	}
	out := make([]OutcomeEvent, len(msgs))
	for i, m := range msgs {
		out[i] = eventOf(m)
	}
	return out, nil
}

// Count is how many outcome events the stream holds.
func (s *Events) Count(ctx context.Context) (int64, error) {
	n, err := s.rdb.XLen(ctx, s.Key()).Result()
	if err != nil {
		return 0, fmt.Errorf("count outcome events: %w", err)
	}
	return n, nil
}

// LastID is the id of the newest outcome event ("0-0" when there is none).
func (s *Events) LastID(ctx context.Context) (string, error) {
	msgs, err := s.rdb.XRevRangeN(ctx, s.Key(), "+", "-", 1).Result()
	if err != nil {
		return "", fmt.Errorf("read outcome events: %w", err)
	}
	if len(msgs) == 0 {
		return "0-0", nil
	}
	return msgs[0].ID, nil
}

// EventReaderOptions configures an EventReader.
type EventReaderOptions struct {
	// Group is the consumer group (one per service that wants every event).
	Group string
	// Consumer names this reader within the group; keep it across restarts
	// so that the events it read and did not acknowledge come back to it.
	Consumer string
	// StartAt is where a new group starts: "$" (the default) for events from
	// now on, "0" for every event the stream still keeps.
	StartAt string
	// Count is how many events one Read returns at most (default 100).
	Count int64
	// Block is how long Read waits for a new event (default 5 s).
	Block time.Duration
	// ClaimIdle takes over events another consumer of the group read and has
	// not acknowledged for this long (a consumer that died); default 1 minute,
	// negative for never.
	ClaimIdle time.Duration
}

// EventReader reads the outcome stream through a consumer group: every event
// is delivered to one consumer of the group, and stays pending until Ack, so
// that a reader that dies before acknowledging gets it again (at least once).
type EventReader struct {
	rdb        redis.UniversalClient
	stream     string
	o          EventReaderOptions
	ownDone    bool   // this consumer's pending events from before have been read
	ownFrom    string // read them on after this id
	lastClaim  time.Time
	claimStart string
	created    bool
}

// NewReader returns a reader of the store's outcome stream.
func (s *Events) NewReader(o EventReaderOptions) (*EventReader, error) {
	if o.Group == "" || o.Consumer == "" {
		return nil, errors.New("event reader: give a Group and a Consumer name")
	}
	if o.StartAt == "" {
		o.StartAt = "$"
	}
	if o.Count <= 0 {
		o.Count = 100
	}
	if o.Block <= 0 {
		o.Block = 5 * time.Second
	}
	if o.ClaimIdle == 0 {
		o.ClaimIdle = time.Minute
	}
	return &EventReader{rdb: s.rdb, stream: s.Key(), o: o, claimStart: "0-0", ownFrom: "0"}, nil
}

// Read returns the next events for this consumer: first those it read before
// a restart and never acknowledged, then those other consumers left
// unacknowledged for ClaimIdle, then new ones (waiting up to Block). It
// returns no events and no error when nothing came within Block.
func (r *EventReader) Read(ctx context.Context) ([]OutcomeEvent, error) {
	if !r.created {
		err := r.rdb.XGroupCreateMkStream(ctx, r.stream, r.o.Group, r.o.StartAt).Err()
		if err != nil && !strings.Contains(err.Error(), "BUSYGROUP") {
			return nil, fmt.Errorf("create consumer group %q: %w", r.o.Group, err)
		}
		r.created = true
	}
	if !r.ownDone {
		msgs, err := r.read(ctx, r.ownFrom, -1)
		if err != nil {
			return nil, err
		}
		if len(msgs) > 0 {
			r.ownFrom = msgs[len(msgs)-1].ID
			return msgs, nil
		}
		r.ownDone = true
	}
	if r.o.ClaimIdle > 0 && time.Since(r.lastClaim) >= r.o.ClaimIdle/2 {
		msgs, start, err := r.rdb.XAutoClaim(ctx, &redis.XAutoClaimArgs{Stream: r.stream, Group: r.o.Group,
			Consumer: r.o.Consumer, MinIdle: r.o.ClaimIdle, Start: r.claimStart, Count: r.o.Count}).Result()
		if err != nil {
			return nil, fmt.Errorf("claim idle events: %w", err)
		}
		if r.claimStart = start; start == "0-0" {
			r.lastClaim = time.Now()
		}
		if len(msgs) > 0 {
			return events(msgs), nil
		}
	}
	return r.read(ctx, ">", r.o.Block)
}

func (r *EventReader) read(ctx context.Context, id string, block time.Duration) ([]OutcomeEvent, error) {
	streams, err := r.rdb.XReadGroup(ctx, &redis.XReadGroupArgs{Group: r.o.Group, Consumer: r.o.Consumer,
		Streams: []string{r.stream, id}, Count: r.o.Count, Block: block}).Result()
	if errors.Is(err, redis.Nil) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read outcome events: %w", err)
	}
	var out []OutcomeEvent
	for _, st := range streams {
		out = append(out, events(st.Messages)...)
	}
	return out, nil
}

func events(msgs []redis.XMessage) []OutcomeEvent {
	out := make([]OutcomeEvent, 0, len(msgs))
	for _, m := range msgs {
		if m.Values == nil {
			continue // trimmed from the stream while pending
		}
		out = append(out, eventOf(m))
	}
	return out
}

// Ack acknowledges events by id: they will not be delivered again.
func (r *EventReader) Ack(ctx context.Context, ids ...string) error {
	if len(ids) == 0 {
		return nil
	}
	if err := r.rdb.XAck(ctx, r.stream, r.o.Group, ids...).Err(); err != nil {
		return fmt.Errorf("acknowledge events: %w", err)
	}
	return nil
}
