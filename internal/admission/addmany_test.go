package admission

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/redis/go-redis/v9"

	"github.com/orgsync/orgsync/internal/ratelimit"
)

// TestAddManyIsAddOneByOne: addmany folds into one pass per call what add
// repeats per update (the sequence counter, the account records, the
// schedule, the wake-up). For a batch with repeated ids, ids already in,
// several organizations per account, several accounts (one parked, one held,
// one with an organization admitted), not-before times and replays, it must
// answer what add one update at a time answers and leave every admission key
// (values, scores, lanes, schedule, wake-up token, expiries) as add leaves it,
// whether or not the admitters' plan calls for a wake-up, on one shard or
// several.
func TestAddManyIsAddOneByOne(t *testing.T) {
	t.Parallel()
	plans := []struct {
		name string
		plan string // "": no plan key
	}{
		{"no plan", ""},
		{"plan later than every add", fmt.Sprint(t0.UnixMilli() + 7_200_000)},
		{"plan before every add", fmt.Sprint(t0.UnixMilli() - 1)},
		{"plan between adds due now and adds not before", fmt.Sprint(t0.UnixMilli() + 1_800_000)},
	}
	for _, shards := range []int{1, 3} {
		for _, pl := range plans {
			t.Run(fmt.Sprintf("%d shards, %s", shards, pl.name), func(t *testing.T) {
				t.Parallel()
				backends(t, func(t *testing.T, rdb redis.UniversalClient) {
					ctx := context.Background()
					items := addManyBatch()
					// Each side on its own key prefix of the same server, on one clock.
					many, _ := addManyState(t, rdb, "many", shards, pl.plan)
					one, _ := addManyState(t, rdb, "one", shards, pl.plan)
					got, err := many.AddMany(ctx, items)
					if err != nil {
						t.Fatal(err)
					}
					want := make([]int64, len(items))
					for i, it := range items {
						want[i] = addOne(t, one, it)
					}
					if diff := cmp.Diff(want, got); diff != "" {
						t.Errorf("sequence numbers (-add one by one +addmany):\n%s", diff)
					}
					for _, w := range want {
						if w != 0 && w < t0.UnixMilli() {
							t.Errorf("sequence number %d below the clock's %d", w, t0.UnixMilli())
						}
					}
					if diff := cmp.Diff(dumpKeys(t, rdb, "one"), dumpKeys(t, rdb, "many")); diff != "" {
						t.Errorf("Redis state (-add one by one +addmany):\n%s", diff)
					}
				})
			})
		}
	}
}

// addManyState builds the same state before the batch under prefix: waiting,
// admitted and parked updates, a held account, an expiring account record,
// the plan, no wake-up token.
func addManyState(t *testing.T, rdb redis.UniversalClient, prefix string, shards int, plan string) (*Scheduler, *clock) {
	t.Helper()
	ctx := context.Background()
	s, clk := newTest(t, rdb, Config{KeyPrefix: prefix, Shards: shards, Account: ratelimit.Limit{Requests: 1, Window: time.Second}})
	if err := s.Configure(ctx); err != nil {
		t.Fatal(err)
	}
	// Sequence numbers a little behind the clock's: the batch moves them up to it.
	for _, it := range []Item{
		{ID: "old-A1", Account: "A", Org: "A/o1", Queue: "q", Payload: []byte("p")},
		{ID: "old-A2", Account: "A", Org: "A/o2", Queue: "q", Payload: []byte("p")},
		{ID: "old-B1", Account: "B", Org: "B/o1", Queue: "q", Payload: []byte("p")},
		{ID: "old-P1", Account: "P", Org: "P/o1", Queue: "q", Payload: []byte("p")},
		{ID: "old-H1", Account: "H", Org: "H/o9", Queue: "q", Payload: []byte("p")},
		{ID: "old-G1", Account: "G", Org: "G/o1", Queue: "q", Payload: []byte("p")},
	} {
		if _, err := s.Add(ctx, it); err != nil {
			t.Fatal(err)
		}
	}
	clk.add(time.Second)
	// A/o1's head admitted (the rest of A waits its next slot); G's only
	// update done (its record expires); P parked; H held.
	if _, _, err := s.Admit(ctx, "proc"); err != nil {
		t.Fatal(err)
	}
	if ok, err := s.Finish(ctx, "G", "old-G1", AnyGeneration); err != nil || !ok {
		t.Fatalf("finish old-G1: %v, %v", ok, err)
	}
	if err := s.Park(ctx, "P", "blocked", 403); err != nil {
		t.Fatal(err)
	}
	if err := s.Hold(ctx, "H", clk.now().Add(time.Minute), "rate_limited", 429); err != nil {
		t.Fatal(err)
	}
	for i := range shards {
		b := shardBase(prefix, i)
		if plan == "" {
			rdb.Del(ctx, b+"plan")
		} else {
			rdb.Set(ctx, b+"plan", plan, 0)
		}
		rdb.Del(ctx, b+"notify")
	}
	return s, clk
}

// addManyBatch is the batch: each case addmany folds, then a deterministic
// mix of accounts and organizations.
func addManyBatch() []Item {
	later := t0.Add(time.Hour)
	it := func(id, account, org string) Item {
		return Item{ID: id, Account: account, Org: account + "/" + org, Queue: "q-" + account, Payload: []byte("body of " + id)}
	}
	items := []Item{
		it("n1", "A", "o1"),     // behind A/o1's admitted head
		it("n2", "A", "o3"),     // a new organization: ready
		it("n3", "A", "o3"),     // behind n2
		it("n2", "A", "o3"),     // repeated in the batch: 0
		it("old-A2", "A", "o2"), // already in: 0
		it("n4", "A", "o2"),     // behind A/o2's waiting head
		it("n5", "B", "o2"),     // B: a second organization
		it("n6", "C", "o1"),     // a new account
		it("n7", "C", "o2"),     // its second organization
		it("n8", "P", "o2"),     // a parked account: its lane grows, it stays off the schedule
		it("n9", "H", "o1"),     // a held account: scheduled at the hold's end
		it("n10", "D", "o1"),    // not before an hour from now
		it("n11", "D", "o2"),    // D's other organization, due now
		it("n12", "E", "o1"),    // E: only not-before updates, scheduled at the first
		it("n13", "E", "o1"),    // behind n12, not before either
		it("n19", "L", "o1"),    // L: not before, and nothing else
		it("n14", "F", "o1"),    // a replay heading its line: keeps its origin
		it("n15", "F", "o1"),    // a replay behind it
		it("n14", "F", "o1"),    // the replay again: 0
		it("old-B1", "B", "o1"), // already in: 0
		it("n16", "H", "o9"),    // behind H's waiting head
		{ID: "n17", Account: "Q", Org: "shared", Queue: "q", Payload: []byte("q")}, // two accounts naming
		{ID: "n18", Account: "R", Org: "shared", Queue: "q", Payload: []byte("r")}, // one organization key
	}
	for i := range items {
		switch items[i].ID {
		case "n10", "n12", "n13", "n19":
			items[i].NotBefore = later.Add(time.Duration(i) * time.Second)
		case "n14", "n15":
			items[i].Origin = 1_700_000_000_000 + int64(i)
		}
	}
	accounts := []string{"A", "B", "C", "D", "E", "F", "G", "H", "P"}
	for i := range 200 {
		x := it(fmt.Sprint("m", i), accounts[(i*7)%len(accounts)], fmt.Sprint("o", (i*13)%6))
		switch {
		case i%17 == 0:
			x.NotBefore = later.Add(time.Duration(i) * time.Millisecond)
		case i%19 == 0:
			x.Origin = 1_700_000_000_000 + int64(i)
		case i%23 == 0:
			x.ID = fmt.Sprint("m", i-23) // repeated
		}
		items = append(items, x)
	}
	return items
}

// addOne adds it through the add operation (not addmany): the reference.
func addOne(t *testing.T, s *Scheduler, it Item) int64 {
	t.Helper()
	ctx := context.Background()
	n, err := s.Shards(ctx)
	if err != nil {
		t.Fatal(err)
	}
	home, err := s.of(ctx, it.Account)
	if err != nil {
		t.Fatal(err)
	}
	seq, err := script.Run(ctx, s.rdb, []string{home.key}, s.args("add",
		[]any{n, it.ID, it.Account, it.Org, it.Queue, ms(it.NotBefore), it.Payload, it.Origin})...).Int64()
	if err != nil {
		t.Fatalf("add %s: %v", it.ID, err)
	}
	return seq
}

// dumpKeys reads every key under prefix: its type, its value (members with
// their scores), and whether it expires, by name without the prefix.
func dumpKeys(t *testing.T, rdb redis.UniversalClient, prefix string) map[string]string {
	t.Helper()
	ctx := context.Background()
	keys, err := rdb.Keys(ctx, prefix+":*").Result()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, k := range keys {
		typ := rdb.Type(ctx, k).Val()
		var v string
		switch typ {
		case "string":
			v = rdb.Get(ctx, k).Val()
		case "hash":
			h := rdb.HGetAll(ctx, k).Val()
			var fs []string
			for f, x := range h {
				fs = append(fs, f+"="+x)
			}
			slices.Sort(fs)
			v = strings.Join(fs, " ")
		case "zset":
			zs := rdb.ZRangeWithScores(ctx, k, 0, -1).Val()
			var ms []string
			for _, z := range zs {
				ms = append(ms, fmt.Sprintf("%v@%v", z.Member, z.Score))
			}
			v = strings.Join(ms, " ")
		case "list":
			v = strings.Join(rdb.LRange(ctx, k, 0, -1).Val(), " ")
		case "set":
			m := rdb.SMembers(ctx, k).Val()
			slices.Sort(m)
			v = strings.Join(m, " ")
		default:
			t.Fatalf("%s: type %s", k, typ)
		}
		ttl := "persistent"
		if d := rdb.PTTL(ctx, k).Val(); d > 0 {
			ttl = "expires"
		}
		out[strings.TrimPrefix(k, prefix)] = typ + " " + ttl + ": " + v
	}
	return out
}
