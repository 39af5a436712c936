package tasks

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// DefaultResultTTL is how long results, attempt histories and the idempotency
// ledger are kept (--result-ttl).
const DefaultResultTTL = 7 * 24 * time.Hour

// DefaultMaxAttemptsKept bounds the attempt history of one update.
const DefaultMaxAttemptsKept = 50

// Result is the stored answer to a completed update.
type Result struct {
	TaskID         string            `json:"task_id"`
	IdempotencyKey string            `json:"idempotency_key"`
	StatusCode     int               `json:"status_code"`
	Header         map[string]string `json:"header,omitempty"`
	// Body is the response body when it is JSON; BodyText holds any other body.
	Body           json.RawMessage `json:"body,omitempty"`
	BodyText       string          `json:"body_text,omitempty"`
	Attempts       int             `json:"attempts"`
	FirstAttemptAt time.Time       `json:"first_attempt_at"`
	CompletedAt    time.Time       `json:"completed_at"`
	// Replayed is set when Truto answered from its idempotency cache.
	Replayed bool `json:"replayed,omitempty"`
	// Truncated says the answer was longer than MaxResultBody and only its
	// start is kept (in BodyText).
	Truncated bool `json:"truncated,omitempty"`
	// Queue is the queue the update was applied from.
	Queue string `json:"queue,omitempty"`
	// QueueTaskID named asynq's completed copy of the run that applied it,
	// when asynq kept one (results stored before the ledger kept the update).
	QueueTaskID string `json:"queue_task_id,omitempty"`
}

// Attempt is one try of an update: a request sent, or a wait decided without sending.
type Attempt struct {
	At         time.Time `json:"at"`
	Sent       bool      `json:"sent"`
	StatusCode int       `json:"status_code,omitempty"`
	LatencyMS  int64     `json:"latency_ms,omitempty"`
	Class      string    `json:"class"`
	Reason     string    `json:"reason"`
	Message    string    `json:"message,omitempty"`
	RateLimit  string    `json:"ratelimit,omitempty"`
	RetryAfter string    `json:"retry_after,omitempty"`
}

// Record is what the ledger knows of one update.
type Record struct {
	TaskID         string    `json:"task_id"`
	State          State     `json:"state,omitempty"`
	Spent          int       `json:"spent"`
	Attempts       int       `json:"attempts"`
	FirstAttemptAt time.Time `json:"first_attempt_at,omitzero"`
	LastAttemptAt  time.Time `json:"last_attempt_at,omitzero"`
	LastError      string    `json:"last_error,omitempty"`
	Result         *Result   `json:"result,omitempty"`
	// DeadLettered says a dead letter exists for the update.
	DeadLettered bool `json:"dead_lettered,omitempty"`
	// Runs names the runs the update is in.
	Runs []string `json:"runs,omitempty"`
	// Update is the update as it was applied (kept with its result).
	Update *Update `json:"update,omitempty"`
}

// Ledger is the per-update ledger (Store.Ledger): each update's state,
// retry budget, attempt history and result, kept for the result TTL, and
// the index of idempotency keys to the accounts that used them. The handler
// writes it; Get and Attempts read it.
type Ledger struct{ *base }

func (s *Ledger) recKey(taskID string) string { return s.prefix + ":{" + taskID + "}:rec" }
func (s *Ledger) attKey(taskID string) string { return s.prefix + ":{" + taskID + "}:att" }

// Get returns the ledger record of the update with task id taskID (State ""
// and Attempts 0 when it has never been tried).
func (s *Ledger) Get(ctx context.Context, taskID string) (Record, error) {
	// Not a transaction: the two keys live in different hash slots.
	pipe := s.rdb.Pipeline()
	read := s.getIn(ctx, pipe, taskID)
	_, _ = pipe.Exec(ctx)
	return read()
}

// getIn queues Get's reads in pipe; the returned function reads the record
// once the pipeline has run.
func (s *Ledger) getIn(ctx context.Context, pipe redis.Pipeliner, taskID string) func() (Record, error) {
	all := pipe.HGetAll(ctx, s.recKey(taskID))
	dead := s.dead.deadIn(ctx, pipe, taskID)
	return func() (Record, error) {
		if err := errors.Join(all.Err(), dead.Err()); err != nil {
			return Record{}, fmt.Errorf("read ledger of %s: %w", taskID, err)
		}
		return recordOf(taskID, all.Val(), dead.Val()), nil
	}
}

func recordOf(taskID string, m map[string]string, dead bool) Record {
	r := Record{TaskID: taskID, State: State(m["state"]), LastError: m["last_error"], DeadLettered: dead}
	r.Spent, _ = strconv.Atoi(m["spent"])
	r.Attempts, _ = strconv.Atoi(m["attempts"])
	r.FirstAttemptAt = parseTime(m["first_attempt"])
	r.LastAttemptAt = parseTime(m["last_attempt"])
	for f := range m {
		if name, ok := strings.CutPrefix(f, runFieldPrefix); ok {
			r.Runs = append(r.Runs, name)
		}
	}
	slices.Sort(r.Runs)
	if raw := m["update"]; raw != "" {
		var u Update
		if json.Unmarshal([]byte(raw), &u) == nil {
			r.Update = &u
		}
	}
	if raw := m["result"]; raw != "" {
		var res Result
		if err := json.Unmarshal([]byte(raw), &res); err == nil {
			r.Result = &res
		}
	}
	return r
}

// Attempts returns the attempt history of an update, oldest first.
func (s *Ledger) Attempts(ctx context.Context, taskID string) ([]Attempt, error) {
	raw, err := s.rdb.LRange(ctx, s.attKey(taskID), 0, -1).Result()
	if err != nil {
		return nil, fmt.Errorf("read attempts of %s: %w", taskID, err)
	}
	out := make([]Attempt, 0, len(raw))
	for _, r := range raw {
		var a Attempt
		if json.Unmarshal([]byte(r), &a) == nil {
			out = append(out, a)
		}
	}
	return out, nil
}

// recordAttempt appends a to the history and updates the counters; spend says
// whether the attempt spends retry budget. It returns the budget spent so far.
func (s *Ledger) recordAttempt(ctx context.Context, taskID string, a Attempt, spend bool, lastError string) (int, error) {
	b, err := json.Marshal(a)
	if err != nil {
		return 0, err
	}
	rec, att := s.recKey(taskID), s.attKey(taskID)
	pipe := s.rdb.TxPipeline()
	pipe.HSetNX(ctx, rec, "first_attempt", a.At.UTC().Format(time.RFC3339Nano))
	pipe.HSet(ctx, rec, "last_attempt", a.At.UTC().Format(time.RFC3339Nano), "last_error", lastError)
	if a.Sent {
		pipe.HIncrBy(ctx, rec, "attempts", 1)
	}
	spent := pipe.HIncrBy(ctx, rec, "spent", boolInt(spend))
	pipe.RPush(ctx, att, b)
	pipe.LTrim(ctx, att, int64(-s.maxAttempts), -1)
	pipe.PExpire(ctx, rec, s.ttl)
	pipe.PExpire(ctx, att, s.ttl)
	if _, err := pipe.Exec(ctx); err != nil {
		return 0, fmt.Errorf("record attempt of %s: %w", taskID, err)
	}
	return int(spent.Val()), nil
}

// noteWaiting records why the update is waiting, for `enqueue status`.
func (s *Ledger) noteWaiting(ctx context.Context, taskID, reason string) error {
	rec := s.recKey(taskID)
	pipe := s.rdb.TxPipeline()
	pipe.HSet(ctx, rec, "last_error", "waiting: "+reason)
	pipe.PExpire(ctx, rec, s.ttl)
	_, err := pipe.Exec(ctx)
	return err
}

// complete marks the update done and stores its result. It returns the runs
// the update is in, read in the same transaction: a producer that adds the
// update to a run either is seen here or sees the state (see addToRun).
//
// applied is the request that applied it; it joins the attempt history only
// when there is a history (history: earlier attempts): for an update applied
// at its first try the result says all it would.
//
// The update itself is kept beside its result, the one copy of it: asynq
// keeps no completed task (retention 0).
func (s *Ledger) complete(ctx context.Context, taskID string, u *Update, res Result, applied *Attempt, history bool) ([]string, error) {
	b, err := json.Marshal(res)
	if err != nil {
		return nil, err
	}
	rec := s.recKey(taskID)
	pipe := s.rdb.TxPipeline()
	pipe.HSet(ctx, rec, "state", string(StatusCompleted), "result", b, "last_error", "", "attempts", res.Attempts)
	if u != nil {
		ub, err := json.Marshal(u)
		if err != nil {
			return nil, err
		}
		pipe.HSet(ctx, rec, "update", ub)
	}
	if applied != nil {
		at := applied.At.UTC().Format(time.RFC3339Nano)
		pipe.HSetNX(ctx, rec, "first_attempt", at)
		pipe.HSet(ctx, rec, "last_attempt", at)
		if history {
			a, err := json.Marshal(applied)
			if err != nil {
				return nil, err
			}
			att := s.attKey(taskID)
			pipe.RPush(ctx, att, a)
			pipe.LTrim(ctx, att, int64(-s.maxAttempts), -1)
			pipe.PExpire(ctx, att, s.ttl)
		}
	}
	pipe.PExpire(ctx, rec, s.ttl)
	fields := pipe.HKeys(ctx, rec)
	if _, err := pipe.Exec(ctx); err != nil {
		return nil, fmt.Errorf("store result of %s: %w", taskID, err)
	}
	return runsOf(fields.Val()), nil
}

// markDead records that the update ended dead, when its dead letter exists
// already: the handler writes both in one transaction (deadLettered), and
// marks alone only a dead letter found without its mark (written by a
// version that wrote the two apart, and stopped in between).
// It returns the runs the update is in, as complete does.
func (s *Ledger) markDead(ctx context.Context, taskID, reason string) ([]string, error) {
	pipe := s.rdb.TxPipeline()
	fields := s.markDeadIn(ctx, pipe, taskID, reason)
	if _, err := pipe.Exec(ctx); err != nil {
		return nil, fmt.Errorf("mark %s dead: %w", taskID, err)
	}
	return runsOf(fields.Val()), nil
}

// markDeadIn queues markDead's writes in pipe (a transaction on the update's
// slot); the runs are in the returned fields once it has run.
func (s *Ledger) markDeadIn(ctx context.Context, pipe redis.Pipeliner, taskID, reason string) *redis.StringSliceCmd {
	rec := s.recKey(taskID)
	pipe.HSet(ctx, rec, "state", string(StatusDead), "last_error", reason)
	pipe.PExpire(ctx, rec, s.ttl)
	return pipe.HKeys(ctx, rec)
}

// resetForReplay gives the update a fresh budget and clears its final state;
// its attempt history is kept.
func (s *Ledger) resetForReplay(ctx context.Context, taskID string) error {
	if err := s.rdb.HDel(ctx, s.recKey(taskID), "state", "spent", "result").Err(); err != nil {
		return fmt.Errorf("reset ledger of %s: %w", taskID, err)
	}
	return nil
}

func parseTime(s string) time.Time {
	t, _ := time.Parse(time.RFC3339Nano, s)
	return t
}

func boolInt(b bool) int64 {
	if b {
		return 1
	}
	return 0
}

// ErrNotFound is returned when a record does not exist.
var ErrNotFound = errors.New("not found")
