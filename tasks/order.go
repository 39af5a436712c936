package tasks

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"
)

// Ordering (DESIGN.md "Ordering"): updates to the same organization (same
// account and id) apply in the order they were enqueued, and never two at
// once. Each organization has a line in Redis: a sorted set of its pending
// updates' task ids, scored by a per-organization sequence number taken at
// enqueue. Only the head of the line is sent; the others wait without
// spending budget. An update leaves the line when it completes or is
// dead-lettered, so a dead update never blocks its successors.

// DefaultOrphanGrace is how long an entry at the head of a line may have no
// asynq task before it is taken for the leftover of a producer that crashed
// between joining the line and enqueueing, and removed.
const DefaultOrphanGrace = 5 * time.Minute

// DefaultOrderWait is how long an update waits before looking at its line again.
const DefaultOrderWait = time.Second

func orderTag(account, id string) string {
	sum := sha256.Sum256([]byte(account + "\x00" + id))
	return "o_" + hex.EncodeToString(sum[:12])
}

type orderKeys struct{ seq, line, joined, last string }

func (s *Store) orderKeys(account, id string) orderKeys {
	base := s.prefix + ":{" + orderTag(account, id) + "}:"
	return orderKeys{seq: base + "seq", line: base + "line", joined: base + "joined", last: base + "last_applied"}
}

// joinScript takes the next sequence number and joins the line, unless the
// task is in it already. KEYS: seq, line, joined. ARGV: task id, queue,
// now_ms, origin (0: the new sequence number itself). The join record is
// "queue|joined_ms|origin". Returns {seq, added}.
//
// None of these keys expires: the line and its join times empty themselves
// as updates leave (Redis drops empty keys), and the sequence counter (and
// last_applied) must never restart, or new updates would look older than old
// dead letters. That is one small counter per organization ever updated.
var joinScript = redis.NewScript(`
local cur = redis.call('ZSCORE', KEYS[2], ARGV[1])
if cur then return {tonumber(cur), 0} end
local seq = redis.call('INCR', KEYS[1])
redis.call('ZADD', KEYS[2], seq, ARGV[1])
local origin = tonumber(ARGV[4])
if origin == 0 then origin = seq end
redis.call('HSET', KEYS[3], ARGV[1], ARGV[2] .. '|' .. ARGV[3] .. '|' .. origin)
return {seq, 1}
`)

// joinLine puts the update in its organization's line and returns its sequence number.
func (s *Store) joinLine(ctx context.Context, u Update, taskID, queue string, origin int64) (seq int64, added bool, err error) {
	k := s.orderKeys(u.IntegratedAccountID, u.ID)
	res, err := joinScript.Run(ctx, s.rdb, []string{k.seq, k.line, k.joined},
		taskID, queue, s.now().UnixMilli(), origin).Int64Slice()
	if err != nil {
		return 0, false, fmt.Errorf("join the line of organization %s: %w", u.ID, err)
	}
	return res[0], res[1] == 1, nil
}

// leaveLine removes the update from its organization's line; when applied,
// it also records seq (the update's origin: its first place in the line) as
// the organization's last applied sequence number, if it is the highest.
func (s *Store) leaveLine(ctx context.Context, u Update, taskID string, applied bool, seq int64) error {
	k := s.orderKeys(u.IntegratedAccountID, u.ID)
	pipe := s.rdb.TxPipeline()
	pipe.ZRem(ctx, k.line, taskID)
	pipe.HDel(ctx, k.joined, taskID)
	if applied && seq > 0 {
		pipe.Eval(ctx, `local c = tonumber(redis.call('GET', KEYS[1]) or '0')
if tonumber(ARGV[1]) > c then redis.call('SET', KEYS[1], ARGV[1]) end
return 1`, []string{k.last}, seq)
	}
	if _, err := pipe.Exec(ctx); err != nil {
		return fmt.Errorf("leave the line of organization %s: %w", u.ID, err)
	}
	return nil
}

// LastApplied returns the sequence number of the newest update applied to
// the organization (0 when none is known).
func (s *Store) LastApplied(ctx context.Context, account, id string) (int64, error) {
	n, err := s.rdb.Get(ctx, s.orderKeys(account, id).last).Int64()
	if errors.Is(err, redis.Nil) {
		return 0, nil
	}
	return n, err
}

// newerThan describes an update of u's organization newer than origin that
// has been applied, or is queued or retrying ("" when there is none):
// replaying an update of that origin would then overwrite newer data.
func (s *Store) newerThan(ctx context.Context, u Update, taskID string, origin int64) (string, error) {
	last, err := s.LastApplied(ctx, u.IntegratedAccountID, u.ID)
	if err != nil {
		return "", err
	}
	if last > origin {
		return "has been applied since this one died", nil
	}
	// Members placed after origin are either newer updates or replays of
	// older ones (which keep their origin): the join record tells them apart.
	k := s.orderKeys(u.IntegratedAccountID, u.ID)
	later, err := s.rdb.ZRangeArgs(ctx, redis.ZRangeArgs{Key: k.line, Start: "(" + strconv.FormatInt(origin, 10), Stop: "+inf",
		ByScore: true}).Result()
	if err != nil {
		return "", fmt.Errorf("read the line of organization %s: %w", u.ID, err)
	}
	if len(later) == 0 {
		return "", nil
	}
	joins, err := s.rdb.HMGet(ctx, k.joined, later...).Result()
	if err != nil {
		return "", fmt.Errorf("read the line of organization %s: %w", u.ID, err)
	}
	for i, id := range later {
		if id == taskID {
			continue
		}
		rec, _ := joins[i].(string)
		if joinOrigin(rec) > origin {
			return "is queued (" + id + ") and would apply before this one", nil
		}
	}
	return "", nil
}

// joinOrigin reads the origin from a join record ("queue|ms|origin"); a
// record without one (written before origins were kept) counts as newer.
func joinOrigin(rec string) int64 {
	parts := strings.Split(rec, "|")
	if len(parts) < 3 {
		return 1 << 62
	}
	n, err := strconv.ParseInt(parts[2], 10, 64)
	if err != nil {
		return 1 << 62
	}
	return n
}

// removeIfScore takes head out of the line only if it still has the score
// it was read with: a replay may have re-entered it since.
var removeIfScore = redis.NewScript(`
local cur = redis.call('ZSCORE', KEYS[1], ARGV[1])
if cur and tonumber(cur) == tonumber(ARGV[2]) then
  redis.call('ZREM', KEYS[1], ARGV[1])
  redis.call('HDEL', KEYS[2], ARGV[1])
  return 1
end
return 0
`)

// headWait is how long an update behind head should wait before looking
// again: until the head's next attempt when asynq has one scheduled (a head
// backing off for minutes should not have its line re-checking every
// second), at least DefaultOrderWait and at most maxOrderWait.
func (s *Store) headWait(ctx context.Context, u Update, head string) time.Duration {
	k := s.orderKeys(u.IntegratedAccountID, u.ID)
	joined, err := s.rdb.HGet(ctx, k.joined, head).Result()
	if err != nil {
		return DefaultOrderWait
	}
	queue, _, _ := strings.Cut(joined, "|")
	info, err := asynq.NewInspectorFromRedisClient(s.rdb).GetTaskInfo(queue, head)
	if err != nil || (info.State != asynq.TaskStateRetry && info.State != asynq.TaskStateScheduled) {
		return DefaultOrderWait
	}
	return min(max(time.Until(info.NextProcessAt), DefaultOrderWait), maxOrderWait)
}

// maxOrderWait bounds a wait behind a head, in case the head is run early
// (an operator's `RunTask`, the circuit closing).
const maxOrderWait = 30 * time.Second

// ahead reports the update that must go before taskID, if any, clearing
// heads that are already finished or orphaned. It returns "" when taskID may go.
func (s *Store) ahead(ctx context.Context, u Update, taskID string, grace time.Duration) (string, error) {
	k := s.orderKeys(u.IntegratedAccountID, u.ID)
	for range 16 { // each pass removes one stale head; a bound against surprises
		heads, err := s.rdb.ZRangeWithScores(ctx, k.line, 0, 0).Result()
		if err != nil {
			return "", fmt.Errorf("read the line of organization %s: %w", u.ID, err)
		}
		if len(heads) == 0 {
			return "", nil // not in a line (enqueued before ordering, or removed as stale): go
		}
		head, _ := heads[0].Member.(string)
		if head == taskID {
			return "", nil
		}
		stale, err := s.staleHead(ctx, k, head, grace)
		if err != nil {
			return "", err
		}
		if !stale {
			return head, nil
		}
		if err := removeIfScore.Run(ctx, s.rdb, []string{k.line, k.joined}, head, heads[0].Score).Err(); err != nil {
			return "", err
		}
	}
	return "", fmt.Errorf("the line of organization %s keeps changing: try again", u.ID)
}

// staleHead: the head finished without leaving the line (a crash in
// between), or it never reached asynq (a producer crash) and is past grace.
func (s *Store) staleHead(ctx context.Context, k orderKeys, head string, grace time.Duration) (bool, error) {
	rec, err := s.Get(ctx, head)
	if err != nil {
		return false, err
	}
	if rec.State == StateCompleted || rec.State == StateDead {
		return true, nil
	}
	joined, err := s.rdb.HGet(ctx, k.joined, head).Result()
	if errors.Is(err, redis.Nil) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	parts := strings.Split(joined, "|")
	if len(parts) < 2 {
		return false, nil
	}
	queue := parts[0]
	ms, _ := strconv.ParseInt(parts[1], 10, 64)
	if s.now().Sub(time.UnixMilli(ms)) < grace {
		return false, nil
	}
	_, err = asynq.NewInspectorFromRedisClient(s.rdb).GetTaskInfo(queue, head)
	if errors.Is(err, asynq.ErrTaskNotFound) || errors.Is(err, asynq.ErrQueueNotFound) {
		return true, nil
	}
	return false, err
}
