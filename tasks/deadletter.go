package tasks

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
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

// The dead-letter store spreads over a Redis Cluster: each record is a string
// in its update's own hash slot, beside its ledger, and the time index that
// lists them oldest first is split over deadLetterBuckets sorted sets, each
// with a hash tag of its own.
//
//	<prefix>:{<task id>}:dead   STRING  the dead letter (JSON); no expiry
//	<prefix>:{dlq:<k>}:index    ZSET    task id -> when it died (ms), for the
//	                                    task ids whose bucket is k
//
// A record is always in the index: Put adds the index entry before
// it writes the record, Delete removes the record before the index
// entry. A write stopped between its two steps (Redis failing, a crash) can
// leave an index entry without a record, which the readers skip and
// Count counts; never a record the index does not list.
// (MigrateLegacy copies a record before its index entry, but
// keeps the old copy until both are written.)

// deadLetterBuckets is how many sorted sets the dead-letter time index is
// split over. It is part of the key layout, not a tunable: a task id's bucket
// is its FNV-1a hash modulo this number, so changing it would move most index
// entries to another bucket, which takes a migration. Sixteen hash tags spread
// over a few masters well enough: on three masters with the 16,384 slots
// split evenly, {dlq:0} to {dlq:15} fall 4, 5 and 7 to a master
// (TestDeadLetterBucketsSpreadOverMasters); the records, the bulk of the
// bytes, spread by task id.
const deadLetterBuckets = 16

// DeadLetters is the dead-letter store (Store.DeadLetters): one record per
// update that ended dead, and the time index that lists them.
type DeadLetters struct{ *base }

// deadKey is the key of the dead letter of taskID.
func (s *DeadLetters) deadKey(taskID string) string { return s.prefix + ":{" + taskID + "}:dead" }

// deadIndexKey is the key of index bucket k.
func (s *DeadLetters) deadIndexKey(k int) string {
	return s.prefix + ":{dlq:" + strconv.Itoa(k) + "}:index"
}

// deadIndexOf is the key of the index bucket that lists taskID.
func (s *DeadLetters) deadIndexOf(taskID string) string { return s.deadIndexKey(deadBucket(taskID)) }

// deadBucket is taskID's index bucket: FNV-1a (32 bits) of its bytes, modulo
// deadLetterBuckets. It must never change (see deadLetterBuckets).
func deadBucket(taskID string) int {
	h := fnv.New32a()
	_, _ = h.Write([]byte(taskID))
	return int(h.Sum32() % deadLetterBuckets)
}

// deadIn queues in pipe whether taskID has a dead letter (EXISTS, read as a
// bool).
func (s *DeadLetters) deadIn(ctx context.Context, pipe redis.Pipeliner, taskID string) *redis.BoolCmd {
	c := redis.NewBoolCmd(ctx, "exists", s.deadKey(taskID))
	_ = pipe.Process(ctx, c) // queued; its error is the command's, read after Exec
	return c
}

// getIn queues in pipe the read of taskID's dead letter, for deadOf.
func (s *DeadLetters) getIn(ctx context.Context, pipe redis.Pipeliner, taskID string) *redis.StringCmd {
	return pipe.Get(ctx, s.deadKey(taskID))
}

// deadOf is the dead letter a getIn read, or false when there was none to
// read (removed since its id was found, or never there) or it is unreadable.
func deadOf(c *redis.StringCmd) (DeadLetter, bool) {
	var d DeadLetter
	if c.Err() != nil || json.Unmarshal([]byte(c.Val()), &d) != nil {
		return DeadLetter{}, false
	}
	return d, true
}

// Put writes (or overwrites) the dead letter of d.TaskID.
func (s *DeadLetters) Put(ctx context.Context, d DeadLetter) error {
	_, err := s.put(ctx, d, false)
	return err
}

// deadLettered writes the dead letter d and marks the ledger dead (as
// markDead) in one transaction: the record and the ledger share the update's
// hash slot, so a later run finds both or neither. It returns the runs the
// update is in.
func (s *DeadLetters) deadLettered(ctx context.Context, d DeadLetter) ([]string, error) {
	return s.put(ctx, d, true)
}

func (s *DeadLetters) put(ctx context.Context, d DeadLetter, mark bool) ([]string, error) {
	b, err := json.Marshal(d)
	if err != nil {
		return nil, err
	}
	// The index entry first, in a round trip of its own (its bucket is in
	// another slot, on a cluster perhaps another master): see the layout.
	z := redis.Z{Score: float64(d.DeadAt.UnixMilli()), Member: d.TaskID}
	if err := s.rdb.ZAdd(ctx, s.deadIndexOf(d.TaskID), z).Err(); err != nil {
		return nil, fmt.Errorf("write dead letter %s: %w", d.TaskID, err)
	}
	pipe := s.rdb.TxPipeline()
	pipe.Set(ctx, s.deadKey(d.TaskID), b, 0)
	var fields *redis.StringSliceCmd
	if mark {
		fields = s.ledger.markDeadIn(ctx, pipe, d.TaskID, d.Reason)
	}
	if _, err := pipe.Exec(ctx); err != nil {
		return nil, fmt.Errorf("write dead letter %s: %w", d.TaskID, err)
	}
	if d.IdempotencyKey != "" && d.Update.IntegratedAccountID != "" {
		// Keeps the dead letter findable by its key alone a while longer;
		// with the account given it is always found.
		_ = s.ledger.noteKey(ctx, d.Update.IntegratedAccountID, d.IdempotencyKey)
	}
	if fields == nil {
		return nil, nil
	}
	return runsOf(fields.Val()), nil
}

// Get returns one dead letter by task id, or ErrNotFound.
func (s *DeadLetters) Get(ctx context.Context, taskID string) (DeadLetter, error) {
	raw, err := s.rdb.Get(ctx, s.deadKey(taskID)).Result()
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

// Delete removes a dead letter; it reports whether it existed.
func (s *DeadLetters) Delete(ctx context.Context, taskID string) (bool, error) {
	// The record first, then its index entry (see the layout).
	n, err := s.rdb.Del(ctx, s.deadKey(taskID)).Result()
	if err != nil {
		return false, fmt.Errorf("delete dead letter %s: %w", taskID, err)
	}
	if err := s.rdb.ZRem(ctx, s.deadIndexOf(taskID), taskID).Err(); err != nil {
		return n > 0, fmt.Errorf("delete dead letter %s: its record is gone, its index entry stays: %w", taskID, err)
	}
	return n > 0, nil
}

// Count returns how many dead letters are stored: the entries of
// the index buckets, read in one round trip.
func (s *DeadLetters) Count(ctx context.Context) (int64, error) {
	pipe := s.rdb.Pipeline()
	cards := make([]*redis.IntCmd, deadLetterBuckets)
	for k := range cards {
		cards[k] = pipe.ZCard(ctx, s.deadIndexKey(k))
	}
	if _, err := pipe.Exec(ctx); err != nil {
		return 0, fmt.Errorf("count dead letters: %w", err)
	}
	var n int64
	for _, c := range cards {
		n += c.Val()
	}
	return n, nil
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

// deadIndexPage is how many entries one read of an index bucket returns: a
// scan holds at most this many ids per bucket (about 40 bytes each), however
// many dead letters there are.
const deadIndexPage = 1000

// Each calls fn for every dead letter that matches f, oldest first
// (by the millisecond it died, then by task id), or in the order of f.TaskIDs
// when it names them. It reads the index buckets in pages by score and merges
// them, and the records in pages, so fn may delete the records it is given
// (replay, purge) safely. Each bucket is read up to its newest entry when the
// scan starts: an update replayed by fn that dies again is not met a second
// time. It stops at f.Limit matches, or when fn returns an error (which it
// returns).
func (s *DeadLetters) Each(ctx context.Context, f Filter, fn func(DeadLetter) error) error {
	return s.each(ctx, f, deadIndexPage, fn)
}

// each is Each reading indexPage entries of a bucket at a
// time (tests make it small).
func (s *DeadLetters) each(ctx context.Context, f Filter, indexPage int, fn func(DeadLetter) error) error {
	matched := 0
	each := func(ids []string) (bool, error) {
		pipe := s.rdb.Pipeline()
		gets := make([]*redis.StringCmd, len(ids))
		for i, id := range ids {
			gets[i] = s.getIn(ctx, pipe, id)
		}
		if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
			return false, fmt.Errorf("read dead letters: %w", err)
		}
		for _, g := range gets {
			d, ok := deadOf(g)
			if !ok || !f.Match(d) {
				continue // removed since the index was read, an unknown id, or not a match
			}
			if err := fn(d); err != nil {
				return false, err
			}
			matched++
			if f.Limit > 0 && matched >= f.Limit {
				return false, nil
			}
		}
		return true, nil
	}
	if len(f.TaskIDs) > 0 {
		for start := 0; start < len(f.TaskIDs); start += deadLetterPage {
			if more, err := each(f.TaskIDs[start:min(start+deadLetterPage, len(f.TaskIDs))]); !more || err != nil {
				return err
			}
		}
		return nil
	}
	m := s.newDeadIndexMerge(f.Since, f.Until, indexPage)
	page := make([]string, 0, deadLetterPage)
	for {
		page = page[:0]
		for len(page) < deadLetterPage {
			id, ok, err := m.next(ctx)
			if err != nil {
				return fmt.Errorf("scan dead letters: %w", err)
			}
			if !ok {
				break
			}
			page = append(page, id)
		}
		if len(page) == 0 {
			return nil
		}
		if more, err := each(page); !more || err != nil {
			return err
		}
	}
}

// deadIndexMerge reads the index buckets in pages by score and yields their
// task ids merged, oldest first, ties by task id (the order of a sorted set).
type deadIndexMerge struct {
	s       *DeadLetters
	lo      string // the lowest score, as ZRANGE BYSCORE takes it
	until   int64  // scores below it (ms; 0: no bound)
	buckets []*bucketScan
	bounded bool // each bucket's hi is set
}

// bucketScan is where the scan of one bucket stands.
type bucketScan struct {
	key  string
	page int       // entries per read
	hi   string    // the highest score read, as ZRANGE BYSCORE takes it
	buf  []redis.Z // read, not yet yielded
	// last is the last entry read: the next page starts at its score, and
	// entries at that score up to its id are skipped.
	last    redis.Z
	started bool
	// pastLast says every entry at last's score has been read: the next page
	// starts after it.
	pastLast bool
	done     bool // nothing left to read
}

func (s *DeadLetters) newDeadIndexMerge(since, until time.Time, page int) *deadIndexMerge {
	m := &deadIndexMerge{s: s, lo: "-inf"}
	if !since.IsZero() {
		m.lo = strconv.FormatInt(since.UnixMilli(), 10)
	}
	if !until.IsZero() {
		// Scores are whole milliseconds: a bound inside one keeps that
		// millisecond in the scan, and Filter.Match decides.
		m.until = until.UnixMilli()
		if until.After(time.UnixMilli(m.until)) {
			m.until++
		}
	}
	for k := range deadLetterBuckets {
		m.buckets = append(m.buckets, &bucketScan{key: s.deadIndexKey(k), page: page})
	}
	return m
}

func score(f float64) string { return strconv.FormatFloat(f, 'f', -1, 64) }

// next returns the oldest id not yet returned; false when there is none.
func (m *deadIndexMerge) next(ctx context.Context) (string, bool, error) {
	if err := m.fill(ctx); err != nil {
		return "", false, err
	}
	var head *bucketScan
	for _, b := range m.buckets {
		if len(b.buf) > 0 && (head == nil || zLess(b.buf[0], head.buf[0])) {
			head = b
		}
	}
	if head == nil {
		return "", false, nil
	}
	id := head.buf[0].Member.(string)
	head.buf = head.buf[1:]
	return id, true, nil
}

func zLess(a, b redis.Z) bool {
	return a.Score < b.Score || (a.Score == b.Score && a.Member.(string) < b.Member.(string))
}

// bound sets each bucket's upper bound: its newest entry now, or f.Until
// when that is lower.
func (m *deadIndexMerge) bound(ctx context.Context) error {
	pipe := m.s.rdb.Pipeline()
	newest := make([]*redis.ZSliceCmd, len(m.buckets))
	for i, b := range m.buckets {
		newest[i] = pipe.ZRangeWithScores(ctx, b.key, -1, -1)
	}
	if _, err := pipe.Exec(ctx); err != nil {
		return err
	}
	for i, b := range m.buckets {
		zs := newest[i].Val()
		switch {
		case len(zs) == 0:
			b.done = true
		case m.until != 0 && float64(m.until) <= zs[0].Score:
			b.hi = "(" + strconv.FormatInt(m.until, 10)
		default:
			b.hi = score(zs[0].Score)
		}
	}
	m.bounded = true
	return nil
}

// fill reads the next page of every bucket that has none left to merge (one
// round trip for all of them), until each has some or is done.
func (m *deadIndexMerge) fill(ctx context.Context) error {
	if !m.bounded {
		if err := m.bound(ctx); err != nil {
			return err
		}
	}
	for {
		var need []*bucketScan
		var pages []*redis.ZSliceCmd
		pipe := m.s.rdb.Pipeline()
		for _, b := range m.buckets {
			if len(b.buf) == 0 && !b.done {
				need = append(need, b)
				pages = append(pages, pipe.ZRangeArgsWithScores(ctx, b.pageArgs(m.lo)))
			}
		}
		if len(need) == 0 {
			return nil
		}
		if _, err := pipe.Exec(ctx); err != nil {
			return err
		}
		for i, b := range need {
			if err := b.took(ctx, m.s.rdb, pages[i].Val()); err != nil {
				return err
			}
		}
	}
}

// pageArgs is the read of b's next page.
func (b *bucketScan) pageArgs(lo string) redis.ZRangeArgs {
	from := lo
	switch {
	case b.started && b.pastLast:
		from = "(" + score(b.last.Score)
	case b.started:
		from = score(b.last.Score)
	}
	return redis.ZRangeArgs{Key: b.key, Start: from, Stop: b.hi, ByScore: true, Count: int64(b.page)}
}

// took takes in a page read with pageArgs.
func (b *bucketScan) took(ctx context.Context, rdb redis.UniversalClient, page []redis.Z) error {
	fresh := make([]redis.Z, 0, len(page))
	for _, z := range page {
		if b.started && !b.pastLast && z.Score == b.last.Score && z.Member.(string) <= b.last.Member.(string) {
			continue // read in an earlier page
		}
		fresh = append(fresh, z)
	}
	switch {
	case len(fresh) > 0:
		b.last, b.started, b.pastLast = fresh[len(fresh)-1], true, false
	case len(page) == b.page:
		// A whole page of entries at last's score, all read already: more
		// than a page of dead letters died in that millisecond (in this
		// bucket). Read the rest of that millisecond at once, then go past it.
		at := score(b.last.Score)
		all, err := rdb.ZRangeArgsWithScores(ctx, redis.ZRangeArgs{Key: b.key, Start: at, Stop: at, ByScore: true}).Result()
		if err != nil {
			return err
		}
		for _, z := range all {
			if z.Member.(string) > b.last.Member.(string) {
				fresh = append(fresh, z)
			}
		}
		if len(fresh) > 0 {
			b.last = fresh[len(fresh)-1]
		}
		b.pastLast = true
	}
	b.buf = fresh
	if len(page) < b.page {
		b.done = true // the last page: buf holds the rest
	}
	return nil
}

// The layout before the dead-letter store spread over the cluster: every dead
// letter in one hash and one sorted set, under one hash tag.
func (s *DeadLetters) legacyDeadRecords() string { return s.prefix + ":{dlq}:records" }
func (s *DeadLetters) legacyDeadIndex() string   { return s.prefix + ":{dlq}:index" }

// legacyMoveBatch is how many dead letters one step of
// MigrateLegacy moves.
const legacyMoveBatch = 500

// dropLegacyDeadLetters removes from the old layout (KEYS[1] the hash,
// KEYS[2] the index) the dead letters just copied to the new one, ARGV being
// pairs of task id and the index score copied ("" for a record the index did
// not list). A dead letter whose index entry has changed since it was read
// (an older worker wrote it again) stays, for the next step. It returns how
// many records it removed.
var dropLegacyDeadLetters = redis.NewScript(`
local n = 0
for i = 1, #ARGV, 2 do
  local s = redis.call('ZSCORE', KEYS[2], ARGV[i])
  if (not s and ARGV[i+1] == '') or (s and ARGV[i+1] ~= '' and tonumber(s) == tonumber(ARGV[i+1])) then
    n = n + redis.call('HDEL', KEYS[1], ARGV[i])
    redis.call('ZREM', KEYS[2], ARGV[i])
  end
end
return n`)

// MigrateLegacy moves the dead letters of the old layout (one hash
// and one index under {dlq}) to the per-update records and the index buckets,
// in batches of legacyMoveBatch, oldest first, and deletes what it moved. It
// returns how many it moved.
//
// It can be run again (what it has moved is gone from the old keys), and by
// several processes at once: each batch is copied first, without overwriting
// (SET NX, ZADD NX: a dead letter already in the new layout is newer), then
// removed from the old keys by dropLegacyDeadLetters, whose count says which
// process removed each record, so the counts add up to the records moved. A
// process stopped half-way leaves copies whose originals the next run copies
// again (no-ops) and removes. One race is left: a dead letter that one run
// has moved and an operator then replays or purges, within the few
// milliseconds between another run's read of the same batch and its copy, is
// written back by that other run; it is listed again, and its replay finds
// the update already back and only removes it.
func (s *DeadLetters) MigrateLegacy(ctx context.Context) (int, error) {
	recs, idx := s.legacyDeadRecords(), s.legacyDeadIndex()
	if n, err := s.rdb.Exists(ctx, recs, idx).Result(); err != nil || n == 0 {
		if err != nil {
			err = fmt.Errorf("look for dead letters of the old layout: %w", err)
		}
		return 0, err
	}
	moved := 0
	for {
		// By the index, oldest first.
		zs, err := s.rdb.ZRangeWithScores(ctx, idx, 0, legacyMoveBatch-1).Result()
		if err != nil {
			return moved, fmt.Errorf("read the old dead-letter index: %w", err)
		}
		if len(zs) > 0 {
			ids := make([]string, len(zs))
			for i, z := range zs {
				ids[i] = z.Member.(string)
			}
			raws, err := s.rdb.HMGet(ctx, recs, ids...).Result()
			if err != nil {
				return moved, fmt.Errorf("read the old dead letters: %w", err)
			}
			batch := make([]legacyDead, len(zs))
			for i, z := range zs {
				batch[i] = legacyDead{id: ids[i], score: z.Score, indexed: true}
				batch[i].record, _ = raws[i].(string)
			}
			n, err := s.moveLegacy(ctx, batch)
			moved += n
			if err != nil {
				return moved, err
			}
			continue
		}
		// Then any record the index did not list (none is expected: the old
		// layout wrote both in one transaction), at the time it died.
		seen, n, err := s.moveUnindexed(ctx)
		moved += n
		if err != nil || seen == 0 {
			return moved, err
		}
	}
}

// moveUnindexed moves the records of the old hash that its index does not
// list, in one pass over the hash. It returns how many it saw and moved.
func (s *DeadLetters) moveUnindexed(ctx context.Context) (seen, moved int, err error) {
	var cursor uint64
	for {
		kv, next, err := s.rdb.HScan(ctx, s.legacyDeadRecords(), cursor, "", legacyMoveBatch).Result()
		if err != nil {
			return seen, moved, fmt.Errorf("read the old dead letters: %w", err)
		}
		var batch []legacyDead
		for i := 0; i+1 < len(kv); i += 2 {
			e := legacyDead{id: kv[i], record: kv[i+1]}
			var d DeadLetter
			if json.Unmarshal([]byte(e.record), &d) == nil {
				e.score = float64(d.DeadAt.UnixMilli())
			}
			batch = append(batch, e)
		}
		seen += len(batch)
		if len(batch) > 0 {
			n, err := s.moveLegacy(ctx, batch)
			moved += n
			if err != nil {
				return seen, moved, err
			}
		}
		if cursor = next; cursor == 0 {
			return seen, moved, nil
		}
	}
}

// legacyDead is one dead letter of the old layout.
type legacyDead struct {
	id      string
	record  string  // "" when the index listed a record that is gone
	score   float64 // when it died (ms)
	indexed bool    // the old index listed it, with score
}

// moveLegacy copies batch to the new layout, records first, then removes it
// from the old one. It returns how many old records it removed.
func (s *DeadLetters) moveLegacy(ctx context.Context, batch []legacyDead) (int, error) {
	// Records first, then index entries: a record copied without its entry
	// is still in the old layout, and the next run copies it again.
	pipe := s.rdb.Pipeline()
	byBucket := map[int][]redis.Z{}
	for _, e := range batch {
		if e.record != "" {
			pipe.SetNX(ctx, s.deadKey(e.id), e.record, 0)
			k := deadBucket(e.id)
			byBucket[k] = append(byBucket[k], redis.Z{Score: e.score, Member: e.id})
		}
	}
	if len(byBucket) > 0 {
		if _, err := pipe.Exec(ctx); err != nil {
			return 0, fmt.Errorf("copy dead letters: %w", err)
		}
		pipe = s.rdb.Pipeline()
		for k, zs := range byBucket {
			pipe.ZAddNX(ctx, s.deadIndexKey(k), zs...)
		}
		if _, err := pipe.Exec(ctx); err != nil {
			return 0, fmt.Errorf("index dead letters: %w", err)
		}
	}
	args := make([]any, 0, 2*len(batch))
	for _, e := range batch {
		sc := ""
		if e.indexed {
			sc = score(e.score)
		}
		args = append(args, e.id, sc)
	}
	n, err := dropLegacyDeadLetters.Run(ctx, s.rdb, []string{s.legacyDeadRecords(), s.legacyDeadIndex()}, args...).Int()
	if err != nil {
		return 0, fmt.Errorf("remove moved dead letters from the old layout: %w", err)
	}
	return n, nil
}
