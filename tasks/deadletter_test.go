package tasks

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// deadAt is the time a test's dead letters die: base plus ms milliseconds.
var deadBase = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

func deadAtMS(ms int) time.Time { return deadBase.Add(time.Duration(ms) * time.Millisecond) }

// putDead writes dead letters of ids, each dying at the millisecond at gives it.
func putDead(t *testing.T, s *Store, ids []string, at func(i int) time.Time) {
	t.Helper()
	for i, id := range ids {
		d := DeadLetter{TaskID: id, Class: ClassExhausted, StatusCode: 422 + i%2, DeadAt: at(i),
			Update: Update{ID: "org-" + strconv.Itoa(i%7), IntegratedAccountID: "acct-" + strconv.Itoa(i%3)}}
		if err := s.DeadLetters().Put(context.Background(), d); err != nil {
			t.Fatal(err)
		}
	}
}

// visit lists the task ids Each gives for f, reading index pages
// of indexPage entries.
func visit(t *testing.T, s *Store, f Filter, indexPage int) []string {
	t.Helper()
	var got []string
	if err := s.dead.each(context.Background(), f, indexPage, func(d DeadLetter) error {
		got = append(got, d.TaskID)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return got
}

// oldestFirst sorts ids as the store promises: by the millisecond each died,
// then by task id.
func oldestFirst(ids []string, at map[string]time.Time) []string {
	out := slices.Clone(ids)
	slices.SortFunc(out, func(a, b string) int {
		if c := at[a].UnixMilli() - at[b].UnixMilli(); c != 0 {
			return int(c)
		}
		return strings.Compare(a, b)
	})
	return out
}

func testIDs(n int) []string {
	ids := make([]string, n)
	for i := range ids {
		ids[i] = TaskID("acct", fmt.Sprintf("k-%05d", i))
	}
	return ids
}

// TestDeadLettersEachMergesBucketsOldestFirst: dead letters over every bucket,
// some dying in the same millisecond (more of them than a page holds), are
// given oldest first, ties by task id, whatever the page size.
func TestDeadLettersEachMergesBucketsOldestFirst(t *testing.T) {
	t.Parallel()
	s, _ := realStore(t)
	ids := testIDs(300)
	at := map[string]time.Time{}
	for i, id := range ids {
		switch {
		case i < 120:
			at[id] = deadAtMS(5) // one millisecond for 120: more than a page of each bucket
		case i%3 == 0:
			at[id] = deadAtMS(1000 - i) // distinct, and not in the order of writing
		default:
			at[id] = deadAtMS(i % 11) // small ties, before and after the big one
		}
	}
	putDead(t, s, ids, func(i int) time.Time { return at[ids[i]] })
	want := oldestFirst(ids, at)
	buckets := map[int]bool{}
	for _, id := range ids {
		buckets[deadBucket(id)] = true
	}
	if len(buckets) != deadLetterBuckets {
		t.Fatalf("the test's ids use %d buckets of %d", len(buckets), deadLetterBuckets)
	}
	for _, page := range []int{1, 2, 3, 7, deadIndexPage} {
		if got := visit(t, s, Filter{}, page); !slices.Equal(got, want) {
			t.Errorf("page %d: %d ids, want %d, oldest first; first difference at %d", page, len(got), len(want), firstDiff(got, want))
		}
	}
	if got := visit(t, s, Filter{}, deadIndexPage); len(got) != 300 {
		t.Errorf("EachDeadLetter gave %d, want 300", len(got))
	}
}

func firstDiff(a, b []string) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}

// TestDeadLettersEachFilters: Limit, Since and Until (by the millisecond: at
// or after, before), the other filters, and task ids given in their order.
func TestDeadLettersEachFilters(t *testing.T) {
	t.Parallel()
	s, _ := realStore(t)
	ids := testIDs(100)
	at := map[string]time.Time{}
	for i, id := range ids {
		at[id] = deadAtMS(i / 4 * 10) // four to a millisecond: 0, 10, ..., 240
	}
	putDead(t, s, ids, func(i int) time.Time { return at[ids[i]] })
	all := oldestFirst(ids, at)
	between := func(lo, hi int) []string {
		var out []string
		for _, id := range all {
			if ms := int(at[id].Sub(deadBase).Milliseconds()); ms >= lo && ms < hi {
				out = append(out, id)
			}
		}
		return out
	}
	tests := []struct {
		name string
		f    Filter
		want []string
	}{
		{"limit", Filter{Limit: 7}, all[:7]},
		{"limit beyond", Filter{Limit: 1000}, all},
		{"since", Filter{Since: deadAtMS(100)}, between(100, 1000)},
		{"since between", Filter{Since: deadAtMS(95)}, between(100, 1000)},
		{"until", Filter{Until: deadAtMS(100)}, between(0, 100)},
		{"since and until", Filter{Since: deadAtMS(50), Until: deadAtMS(120)}, between(50, 120)},
		{"since, until and limit", Filter{Since: deadAtMS(50), Until: deadAtMS(120), Limit: 5}, between(50, 120)[:5]},
		{"until before all", Filter{Until: deadAtMS(0)}, nil},
		{"until inside a millisecond", Filter{Until: deadAtMS(100).Add(500 * time.Microsecond)}, between(0, 101)},
		{"since after all", Filter{Since: deadAtMS(241)}, nil},
		{"task ids in their order", Filter{TaskIDs: []string{ids[9], "u_none", ids[3]}}, []string{ids[9], ids[3]}},
		{"task ids and since", Filter{TaskIDs: []string{ids[9], ids[90]}, Since: deadAtMS(100)}, []string{ids[90]}},
	}
	for _, tc := range tests {
		for _, page := range []int{2, deadIndexPage} {
			if got := visit(t, s, tc.f, page); !slices.Equal(got, tc.want) {
				t.Errorf("%s, page %d: got %d ids %v, want %d %v", tc.name, page, len(got), got, len(tc.want), tc.want)
			}
		}
	}
	// The other filters select among them, oldest first.
	var status []string
	for _, id := range all {
		if d, _ := s.DeadLetters().Get(context.Background(), id); d.StatusCode == 423 && d.Update.IntegratedAccountID == "acct-1" {
			status = append(status, id)
		}
	}
	if got := visit(t, s, Filter{StatusCode: 423, Account: "acct-1"}, 3); !slices.Equal(got, status) || len(got) == 0 {
		t.Errorf("status and account filter: got %v, want %v", got, status)
	}
}

// TestDeadLettersEachWhileDeleting: fn deletes each record it is given (as a
// replay or purge does), and a replayed update that dies again meanwhile is
// not met twice; every record is given once and the store ends empty.
func TestDeadLettersEachWhileDeleting(t *testing.T) {
	t.Parallel()
	s, _ := realStore(t)
	ctx := context.Background()
	ids := testIDs(400)
	at := map[string]time.Time{}
	for i, id := range ids {
		at[id] = deadAtMS(i % 13)
	}
	putDead(t, s, ids, func(i int) time.Time { return at[ids[i]] })
	seen := map[string]int{}
	var order []string
	err := s.dead.each(ctx, Filter{}, 5, func(d DeadLetter) error {
		seen[d.TaskID]++
		order = append(order, d.TaskID)
		if ok, err := s.DeadLetters().Delete(ctx, d.TaskID); err != nil || !ok {
			return fmt.Errorf("delete %s: %v, %v", d.TaskID, ok, err)
		}
		if len(order)%50 == 0 { // replayed, and dead again at once
			d.DeadAt = deadAtMS(20 + len(order))
			return s.DeadLetters().Put(ctx, d)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(order, oldestFirst(ids, at)) {
		t.Errorf("given %d, want %d oldest first (first difference at %d)", len(order), len(ids), firstDiff(order, oldestFirst(ids, at)))
	}
	for id, n := range seen {
		if n != 1 {
			t.Errorf("%s given %d times", id, n)
		}
	}
	if n, err := s.DeadLetters().Count(ctx); err != nil || n != 8 {
		t.Errorf("CountDeadLetters = %d, %v; want the 8 that died again", n, err)
	}
}

// TestDeadLetterRecordAndCount: one record's write, read, overwrite and
// delete, and the count over the buckets.
func TestDeadLetterRecordAndCount(t *testing.T) {
	t.Parallel()
	s, rdb := realStore(t)
	ctx := context.Background()
	ids := testIDs(50)
	putDead(t, s, ids, func(i int) time.Time { return deadAtMS(i) })
	if n, err := s.DeadLetters().Count(ctx); err != nil || n != 50 {
		t.Fatalf("CountDeadLetters = %d, %v; want 50", n, err)
	}
	// Written again (a later death): one record, one index entry, moved in time.
	putDead(t, s, ids[:1], func(int) time.Time { return deadAtMS(100) })
	if n, _ := s.DeadLetters().Count(ctx); n != 50 {
		t.Errorf("after an overwrite CountDeadLetters = %d, want 50", n)
	}
	if got := visit(t, s, Filter{}, 4); got[len(got)-1] != ids[0] {
		t.Errorf("the overwritten dead letter is not the newest: %v", got)
	}
	d, err := s.DeadLetters().Get(ctx, ids[0])
	if err != nil || !d.DeadAt.Equal(deadAtMS(100)) || d.StatusCode != 422 {
		t.Errorf("DeadLetter = %+v, %v", d, err)
	}
	if ttl := rdb.PTTL(ctx, s.dead.deadKey(ids[0])).Val(); ttl != -1 {
		t.Errorf("the record's PTTL is %v, want none (-1)", ttl)
	}
	if rec, err := s.Ledger().Get(ctx, ids[0]); err != nil || !rec.DeadLettered {
		t.Errorf("Get = %+v, %v; want DeadLettered", rec, err)
	}
	for i, id := range ids[:10] {
		if ok, err := s.DeadLetters().Delete(ctx, id); err != nil || !ok {
			t.Fatalf("DeleteDeadLetter(%d) = %v, %v", i, ok, err)
		}
	}
	if ok, err := s.DeadLetters().Delete(ctx, ids[0]); err != nil || ok {
		t.Errorf("deleting again = %v, %v; want false", ok, err)
	}
	if _, err := s.DeadLetters().Get(ctx, ids[0]); !errors.Is(err, ErrNotFound) {
		t.Errorf("DeadLetter of a deleted one: %v, want ErrNotFound", err)
	}
	if n, _ := s.DeadLetters().Count(ctx); n != 40 {
		t.Errorf("after 10 deletes CountDeadLetters = %d, want 40", n)
	}
	if rec, _ := s.Ledger().Get(ctx, ids[0]); rec.DeadLettered {
		t.Error("Get says DeadLettered after the delete")
	}
}

// TestDeadLetteredMarksTheLedgerInOneTransaction: the handler's write puts
// the record and the ledger's dead state in one MULTI on the update's slot.
func TestDeadLetteredMarksTheLedgerInOneTransaction(t *testing.T) {
	t.Parallel()
	s, _ := realStore(t)
	ctx := context.Background()
	id := TaskID("acct", "k")
	if tag(s.dead.deadKey(id)) != tag(s.ledger.recKey(id)) {
		t.Fatalf("%s and %s have different hash tags", s.dead.deadKey(id), s.ledger.recKey(id))
	}
	if _, err := s.runs.addToRun(ctx, "r", []runEntry{{1, id, "k"}}); err != nil {
		t.Fatal(err)
	}
	runs, err := s.dead.deadLettered(ctx, DeadLetter{TaskID: id, Reason: "gone", DeadAt: deadAtMS(0)})
	if err != nil || !slices.Equal(runs, []string{"r"}) {
		t.Fatalf("deadLettered = %v, %v; want the run r", runs, err)
	}
	rec, err := s.Ledger().Get(ctx, id)
	if err != nil || rec.State != StatusDead || rec.LastError != "gone" || !rec.DeadLettered {
		t.Errorf("ledger after deadLettered: %+v, %v", rec, err)
	}
}

// tag is the part of a key Redis Cluster hashes.
func tag(key string) string {
	if i := strings.IndexByte(key, '{'); i >= 0 {
		if j := strings.IndexByte(key[i+1:], '}'); j > 0 {
			return key[i+1 : i+1+j]
		}
	}
	return key
}

// crc16 is Redis Cluster's key hash (CRC16-XMODEM).
func crc16(b string) uint16 {
	var crc uint16
	for i := 0; i < len(b); i++ {
		crc ^= uint16(b[i]) << 8
		for range 8 {
			if crc&0x8000 != 0 {
				crc = crc<<1 ^ 0x1021
			} else {
				crc <<= 1
			}
		}
	}
	return crc
}

// TestDeadLetterBucketsSpreadOverMasters: the bucket of a task id is FNV-1a
// modulo 16 and never changes (it is the key layout), and the 16 buckets'
// slots fall on every master of an evenly split three-master cluster, the
// busiest getting 7 of 16.
func TestDeadLetterBucketsSpreadOverMasters(t *testing.T) {
	t.Parallel()
	if crc16("123456789") != 0x31C3 {
		t.Fatal("crc16 is not Redis Cluster's")
	}
	for _, id := range testIDs(1000) {
		h := fnv.New32a()
		h.Write([]byte(id))
		if got, want := deadBucket(id), int(h.Sum32()%deadLetterBuckets); got != want {
			t.Fatalf("deadBucket(%s) = %d, want FNV-1a mod %d = %d", id, got, deadLetterBuckets, want)
		}
	}
	// Fixed, whatever the code becomes: changing them strands the index.
	for id, want := range map[string]int{"u_00000000000000000000000000000000": 13, "unknown": 9, "": 5} {
		if got := deadBucket(id); got != want {
			t.Errorf("deadBucket(%q) = %d, want %d: the layout changed", id, got, want)
		}
	}
	s := NewStore(redis.NewClient(&redis.Options{Addr: "127.0.0.1:0"}))
	var perMaster [3]int
	for k := range deadLetterBuckets {
		slot := int(crc16(tag(s.dead.deadIndexKey(k)))) % 16384
		perMaster[min(slot*3/16384, 2)]++
	}
	t.Logf("index buckets per master of three: %v", perMaster)
	for m, n := range perMaster {
		if n < 3 || n > 8 {
			t.Errorf("master %d holds %d of %d buckets (%v)", m, n, deadLetterBuckets, perMaster)
		}
	}
}

// TestDeadLettersSpreadOverKeys: 20,000 dead letters (written in the old
// layout, moved, and some written new) leave no key holding more than an
// eighth of them: one record per key, the index over 16 buckets.
func TestDeadLettersSpreadOverKeys(t *testing.T) {
	t.Parallel()
	s, rdb := realStore(t)
	ctx := context.Background()
	const n, direct = 20_000, 200
	ids := testIDs(n)
	writeLegacy(t, s, rdb, ids[direct:], func(i int) time.Time { return deadAtMS(i) })
	putDead(t, s, ids[:direct], func(i int) time.Time { return deadAtMS(n + i) })
	moved, err := s.DeadLetters().MigrateLegacy(ctx)
	if err != nil || moved != n-direct {
		t.Fatalf("MigrateLegacyDeadLetters = %d, %v; want %d", moved, err, n-direct)
	}
	if c, _ := s.DeadLetters().Count(ctx); c != n {
		t.Fatalf("CountDeadLetters = %d, want %d", c, n)
	}
	largest, largestKey, keys := int64(0), "", 0
	iter := rdb.Scan(ctx, 0, "*", 1000).Iterator()
	for iter.Next(ctx) {
		k := iter.Val()
		keys++
		var size int64
		switch typ := rdb.Type(ctx, k).Val(); typ {
		case "zset":
			size = rdb.ZCard(ctx, k).Val()
		case "hash":
			size = rdb.HLen(ctx, k).Val()
		case "string":
			size = 1
		default:
			t.Errorf("%s is a %s", k, typ)
		}
		if size > largest {
			largest, largestKey = size, k
		}
	}
	if err := iter.Err(); err != nil {
		t.Fatal(err)
	}
	t.Logf("%d keys; the largest, %s, holds %d of %d dead letters", keys, largestKey, largest, n)
	if largest > n/8 {
		t.Errorf("%s holds %d of %d dead letters, more than an eighth", largestKey, largest, n)
	}
	if keys < n {
		t.Errorf("%d keys for %d dead letters", keys, n)
	}
}

// writeLegacy writes dead letters of ids in the old layout (one hash, one
// index), as a version before the buckets did.
func writeLegacy(t *testing.T, s *Store, rdb *redis.Client, ids []string, at func(i int) time.Time) {
	t.Helper()
	ctx := context.Background()
	for start := 0; start < len(ids); start += 1000 {
		pipe := rdb.Pipeline()
		for i := start; i < min(start+1000, len(ids)); i++ {
			b, _ := json.Marshal(DeadLetter{TaskID: ids[i], Class: ClassExhausted, StatusCode: 422, DeadAt: at(i)})
			pipe.HSet(ctx, s.dead.legacyDeadRecords(), ids[i], b)
			pipe.ZAdd(ctx, s.dead.legacyDeadIndex(), redis.Z{Score: float64(at(i).UnixMilli()), Member: ids[i]})
		}
		if _, err := pipe.Exec(ctx); err != nil {
			t.Fatal(err)
		}
	}
}

// TestDeadLettersMigrateLegacy moves a hand-written old layout, including an
// index entry whose record is gone, a record the index lost and a dead letter
// already in the new layout; a second run moves nothing.
func TestDeadLettersMigrateLegacy(t *testing.T) {
	t.Parallel()
	s, rdb := realStore(t)
	ctx := context.Background()
	ids := testIDs(1203)
	at := map[string]time.Time{}
	for i, id := range ids {
		at[id] = deadAtMS(i % 97)
	}
	writeLegacy(t, s, rdb, ids[:1200], func(i int) time.Time { return at[ids[i]] })
	// An index entry without its record, a record without its index entry.
	rdb.ZAdd(ctx, s.dead.legacyDeadIndex(), redis.Z{Score: 1, Member: ids[1200]})
	b, _ := json.Marshal(DeadLetter{TaskID: ids[1201], DeadAt: at[ids[1201]]})
	rdb.HSet(ctx, s.dead.legacyDeadRecords(), ids[1201], b)
	// Dead again since, in the new layout: the newer record stays.
	newer := DeadLetter{TaskID: ids[7], Reason: "newer", DeadAt: deadAtMS(500)}
	if err := s.DeadLetters().Put(ctx, newer); err != nil {
		t.Fatal(err)
	}
	at[ids[7]] = newer.DeadAt
	n, err := s.DeadLetters().MigrateLegacy(ctx)
	if err != nil || n != 1201 {
		t.Fatalf("MigrateLegacyDeadLetters = %d, %v; want 1201 (1200 indexed, 1 the index lost)", n, err)
	}
	if k := rdb.Exists(ctx, s.dead.legacyDeadRecords(), s.dead.legacyDeadIndex()).Val(); k != 0 {
		t.Errorf("%d old keys left", k)
	}
	want := oldestFirst(append(slices.Clone(ids[:1200]), ids[1201]), at)
	if got := visit(t, s, Filter{}, deadIndexPage); !slices.Equal(got, want) {
		t.Errorf("after the move %d dead letters, want %d oldest first (first difference at %d)", len(got), len(want), firstDiff(got, want))
	}
	if d, _ := s.DeadLetters().Get(ctx, ids[7]); d.Reason != "newer" {
		t.Errorf("the dead letter already in the new layout was overwritten: %+v", d)
	}
	if d, err := s.DeadLetters().Get(ctx, ids[1199]); err != nil || d.StatusCode != 422 || !d.DeadAt.Equal(at[ids[1199]]) {
		t.Errorf("a moved dead letter reads %+v, %v", d, err)
	}
	if n, err := s.DeadLetters().MigrateLegacy(ctx); err != nil || n != 0 {
		t.Errorf("a second run = %d, %v; want 0", n, err)
	}
	if c, _ := s.DeadLetters().Count(ctx); c != 1201 {
		t.Errorf("CountDeadLetters = %d, want 1201", c)
	}
}

// TestDeadLettersMigrateLegacyConcurrently: four processes migrating at once
// move every dead letter once between them.
func TestDeadLettersMigrateLegacyConcurrently(t *testing.T) {
	t.Parallel()
	s, rdb := realStore(t)
	ctx := context.Background()
	ids := testIDs(3000)
	writeLegacy(t, s, rdb, ids, func(i int) time.Time { return deadAtMS(i % 50) })
	var wg sync.WaitGroup
	counts := make([]int, 4)
	errs := make([]error, 4)
	for w := range counts {
		wg.Add(1)
		go func() {
			defer wg.Done()
			other := NewStore(redis.NewClient(&redis.Options{Addr: rdb.Options().Addr}))
			defer other.rdb.Close()
			counts[w], errs[w] = other.DeadLetters().MigrateLegacy(ctx)
		}()
	}
	wg.Wait()
	total := 0
	for w := range counts {
		if errs[w] != nil {
			t.Errorf("migration %d: %v", w, errs[w])
		}
		total += counts[w]
	}
	t.Logf("moved by each: %v", counts)
	if total != len(ids) {
		t.Errorf("moved %d in all, want %d", total, len(ids))
	}
	if c, _ := s.DeadLetters().Count(ctx); c != int64(len(ids)) {
		t.Errorf("CountDeadLetters = %d, want %d", c, len(ids))
	}
	if got := visit(t, s, Filter{}, deadIndexPage); len(got) != len(ids) {
		t.Errorf("EachDeadLetter gave %d, want %d", len(got), len(ids))
	}
	if k := rdb.Exists(ctx, s.dead.legacyDeadRecords(), s.dead.legacyDeadIndex()).Val(); k != 0 {
		t.Errorf("%d old keys left", k)
	}
}
