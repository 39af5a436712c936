package tasks

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
)

// MaxDeadLetterErrorBody bounds the upstream error body kept in a dead letter.
const MaxDeadLetterErrorBody = 8 << 10

// DeadLetter is the record of an update that ended dead. orgsync keeps it in
// its own store, never trimmed: asynq's archive keeps only the newest 10,000
// tasks per queue and is at most a mirror for the queue UI.
type DeadLetter struct {
	TaskID string `json:"task_id"`
	Queue  string `json:"queue"`
	// QueueTaskID is the id of asynq's archived copy (the run that died).
	QueueTaskID string `json:"queue_task_id,omitempty"`
	// Update is the update as enqueued, with its idempotency key. It is empty
	// for a malformed payload, whose bytes are in RawPayload instead.
	Update         Update    `json:"update"`
	RawPayload     string    `json:"raw_payload,omitempty"`
	IdempotencyKey string    `json:"idempotency_key,omitempty"`
	Class          Class     `json:"class"`
	Reason         string    `json:"reason"`
	StatusCode     int       `json:"status_code,omitempty"`
	ErrorBody      string    `json:"error_body,omitempty"`
	Attempts       int       `json:"attempts"`
	EnqueuedAt     time.Time `json:"enqueued_at,omitzero"`
	FirstAttemptAt time.Time `json:"first_attempt_at,omitzero"`
	LastAttemptAt  time.Time `json:"last_attempt_at,omitzero"`
	DeadAt         time.Time `json:"dead_at"`
	Run            string    `json:"run,omitempty"`
	Replays        int       `json:"replays,omitempty"`
	MaxRetry       int       `json:"max_retry,omitempty"`
	// OrderSeq is the update's place in its organization's line when it died.
	OrderSeq int64 `json:"order_seq,omitempty"`
	// OriginSeq is its first place in that line (kept across replays).
	OriginSeq int64 `json:"origin_seq,omitempty"`
}

// payloadVersion is the payload version of the dead update: 1 when its task
// id is the legacy digest of its key alone, so that a replay keeps the task
// id and the Idempotency-Key its earlier attempts had.
func (d DeadLetter) payloadVersion() int {
	if d.IdempotencyKey != "" && d.TaskID == LegacyTaskID(d.IdempotencyKey) {
		return payloadV1
	}
	return PayloadVersion
}

func (s *Store) dlqRecords() string { return s.prefix + ":{dlq}:records" }
func (s *Store) dlqIndex() string   { return s.prefix + ":{dlq}:index" }

// PutDeadLetter writes (or overwrites) the dead letter of d.TaskID.
func (s *Store) PutDeadLetter(ctx context.Context, d DeadLetter) error {
	b, err := json.Marshal(d)
	if err != nil {
		return err
	}
	pipe := s.rdb.TxPipeline()
	pipe.HSet(ctx, s.dlqRecords(), d.TaskID, b)
	pipe.ZAdd(ctx, s.dlqIndex(), redis.Z{Score: float64(d.DeadAt.UnixMilli()), Member: d.TaskID})
	if _, err := pipe.Exec(ctx); err != nil {
		return fmt.Errorf("write dead letter %s: %w", d.TaskID, err)
	}
	if d.IdempotencyKey != "" && d.Update.IntegratedAccountID != "" {
		// Keeps the dead letter findable by its key alone a while longer;
		// with the account given it is always found.
		_ = s.noteKey(ctx, d.Update.IntegratedAccountID, d.IdempotencyKey)
	}
	return nil
}

// DeadLetter returns one dead letter by task id, or ErrNotFound.
func (s *Store) DeadLetter(ctx context.Context, taskID string) (DeadLetter, error) {
	raw, err := s.rdb.HGet(ctx, s.dlqRecords(), taskID).Result()
	if err == redis.Nil {
		return DeadLetter{}, fmt.Errorf("dead letter %s: %w", taskID, ErrNotFound)
	}
	if err != nil {
		return DeadLetter{}, fmt.Errorf("read dead letter %s: %w", taskID, err)
	}
	var d DeadLetter
	if err := json.Unmarshal([]byte(raw), &d); err != nil {
		return DeadLetter{}, fmt.Errorf("decode dead letter %s: %w", taskID, err)
	}
	return d, nil
}

// DeleteDeadLetter removes a dead letter; it reports whether it existed.
func (s *Store) DeleteDeadLetter(ctx context.Context, taskID string) (bool, error) {
	pipe := s.rdb.TxPipeline()
	n := pipe.HDel(ctx, s.dlqRecords(), taskID)
	pipe.ZRem(ctx, s.dlqIndex(), taskID)
	if _, err := pipe.Exec(ctx); err != nil {
		return false, fmt.Errorf("delete dead letter %s: %w", taskID, err)
	}
	return n.Val() > 0, nil
}

// CountDeadLetters returns how many dead letters are stored.
func (s *Store) CountDeadLetters(ctx context.Context) (int64, error) {
	return s.rdb.ZCard(ctx, s.dlqIndex()).Result()
}

// Filter selects dead letters. Zero fields match everything.
type Filter struct {
	TaskIDs    []string
	Account    string
	OrgID      string
	StatusCode int
	Class      Class
	Since      time.Time // dead at or after
	Until      time.Time // dead before
	Limit      int       // 0 = no limit
}

// Match reports whether d passes the filter (Limit aside).
func (f Filter) Match(d DeadLetter) bool {
	if len(f.TaskIDs) > 0 {
		found := false
		for _, id := range f.TaskIDs {
			if id == d.TaskID {
				found = true
				break
			}
		}
		if !found {
			return false
		}
	}
	return (f.Account == "" || f.Account == d.Update.IntegratedAccountID) &&
		(f.OrgID == "" || f.OrgID == d.Update.ID) &&
		(f.StatusCode == 0 || f.StatusCode == d.StatusCode) &&
		(f.Class == "" || f.Class == d.Class) &&
		(f.Since.IsZero() || !d.DeadAt.Before(f.Since)) &&
		(f.Until.IsZero() || d.DeadAt.Before(f.Until))
}

// deadLetterPage is how many records one round trip reads while scanning.
const deadLetterPage = 500

// EachDeadLetter calls fn for every dead letter that matches f, oldest first.
// It reads the index once (ids only, about 40 bytes each) and the records in
// pages, so fn may delete the records it is given (replay, purge) safely. It
// stops at f.Limit matches, or when fn returns an error (which it returns).
func (s *Store) EachDeadLetter(ctx context.Context, f Filter, fn func(DeadLetter) error) error {
	lo := "-inf"
	if !f.Since.IsZero() {
		lo = strconv.FormatInt(f.Since.UnixMilli(), 10)
	}
	hi := "+inf"
	if !f.Until.IsZero() {
		hi = "(" + strconv.FormatInt(f.Until.UnixMilli(), 10)
	}
	ids := f.TaskIDs
	if len(ids) == 0 {
		var err error
		ids, err = s.rdb.ZRangeArgs(ctx, redis.ZRangeArgs{Key: s.dlqIndex(), Start: lo, Stop: hi, ByScore: true}).Result()
		if err != nil {
			return fmt.Errorf("scan dead letters: %w", err)
		}
	}
	matched := 0
	for start := 0; start < len(ids); start += deadLetterPage {
		page := ids[start:min(start+deadLetterPage, len(ids))]
		raws, err := s.rdb.HMGet(ctx, s.dlqRecords(), page...).Result()
		if err != nil {
			return fmt.Errorf("read dead letters: %w", err)
		}
		for _, raw := range raws {
			str, ok := raw.(string)
			if !ok {
				continue // removed since the index was read, or an unknown id
			}
			var d DeadLetter
			if json.Unmarshal([]byte(str), &d) != nil || !f.Match(d) {
				continue
			}
			if err := fn(d); err != nil {
				return err
			}
			matched++
			if f.Limit > 0 && matched >= f.Limit {
				return nil
			}
		}
	}
	return nil
}
