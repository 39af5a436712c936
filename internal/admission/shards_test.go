package admission

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/redis/go-redis/v9"

	"github.com/orgsync/orgsync/internal/ratelimit"
)

// shardTest is a worker's scheduler with n shards (recorded) and a
// producer's that follows the recorded count, on one clock.
func shardTest(t *testing.T, rdb redis.UniversalClient, n int, c Config) (worker, producer *Scheduler, clk *clock) {
	t.Helper()
	c.Shards = n
	worker, clk = newTest(t, rdb, c)
	if err := worker.Configure(context.Background()); err != nil {
		t.Fatal(err)
	}
	producer = New(rdb, Config{}, WithClock(clk.now))
	return worker, producer, clk
}

// accountsInShards returns counts[k] account names of shard k, among
// len(counts) shards, shard by shard.
func accountsInShards(counts ...int) []string {
	byShard := make([][]string, len(counts))
	need := 0
	for _, c := range counts {
		need += c
	}
	for i := 0; need > 0; i++ {
		a := fmt.Sprint("acct", i)
		if k := ShardOf(a, len(counts)); len(byShard[k]) < counts[k] {
			byShard[k] = append(byShard[k], a)
			need--
		}
	}
	return slices.Concat(byShard...)
}

func TestShardsSpreadAccountsAndKeepEachOrganizationsOrder(t *testing.T) {
	t.Parallel()
	backends(t, func(t *testing.T, rdb redis.UniversalClient) {
		ctx := context.Background()
		worker, producer, _ := shardTest(t, rdb, 3, Config{})
		accts := accountsInShards(1, 1, 1)
		for _, a := range accts {
			for i := range 3 {
				add(t, producer, fmt.Sprint(a, "-", i), a, "o")
			}
		}
		// Each account's keys are in its own shard's slot.
		for k, a := range accts {
			want := shardBase("orgsync", k) + "acct:" + a
			if n, err := rdb.Exists(ctx, want).Result(); err != nil || n != 1 {
				t.Errorf("account %s: %s missing (%d, %v)", a, want, n, err)
			}
		}
		var order []string
		for range 3 {
			got, _ := admit(t, worker)
			order = append(order, got...)
			if len(got) != 3 {
				t.Fatalf("admitted %v; want one per account (each account's organization one at a time)", got)
			}
			for _, id := range got {
				a, _, _ := strings.Cut(id, "-")
				if _, err := worker.Finish(ctx, a, id, AnyGeneration); err != nil {
					t.Fatal(err)
				}
			}
		}
		for _, a := range accts {
			var mine []string
			for _, id := range order {
				if strings.HasPrefix(id, a+"-") {
					mine = append(mine, id)
				}
			}
			if diff := cmp.Diff([]string{a + "-0", a + "-1", a + "-2"}, mine); diff != "" {
				t.Errorf("%s's order (-want +got):\n%s", a, diff)
			}
		}
		st, err := producer.Stats(ctx)
		if err != nil || st.Shards != 3 || st.Admitted+st.Running+st.Scheduled != 0 {
			t.Errorf("stats = %+v, %v; want 3 shards, nothing left", st, err)
		}
	})
}

// TestTokenLimitSpansShards: the API token's limit holds across shards: 5/s
// over three accounts in three shards admits one every 200 ms, each
// account in turn, and slots a pass did not use are given back.
func TestTokenLimitSpansShards(t *testing.T) {
	t.Parallel()
	backends(t, func(t *testing.T, rdb redis.UniversalClient) {
		worker, producer, clk := shardTest(t, rdb, 3, Config{Token: ratelimit.Limit{Requests: 5, Window: time.Second}})
		accts := accountsInShards(1, 1, 1)
		for _, a := range accts {
			for i := range 3 {
				add(t, producer, fmt.Sprint(a, "-", i), a, fmt.Sprint("o", i))
			}
		}
		order := oneAtATime(t, worker, clk, 9)
		if got := clk.now().Sub(t0); got != 8*200*time.Millisecond {
			t.Errorf("9 admissions took %v; want 8 intervals of 200ms", got)
		}
		seen := map[string]int{}
		for i, id := range order[:6] {
			a, _, _ := strings.Cut(id, "-")
			seen[a]++
			if seen[a] > i/3+1 {
				t.Errorf("order %v: %s took a second slot before every account had one", order, a)
			}
		}
	})
}

func TestParkAllStopsEveryShard(t *testing.T) {
	t.Parallel()
	backends(t, func(t *testing.T, rdb redis.UniversalClient) {
		ctx := context.Background()
		worker, producer, _ := shardTest(t, rdb, 3, Config{})
		accts := accountsInShards(1, 1, 1)
		if err := worker.Park(ctx, "", "the API token was rejected", 401); err != nil {
			t.Fatal(err)
		}
		for _, a := range accts {
			add(t, producer, a+"-0", a, "o")
		}
		if got, _ := admit(t, worker); len(got) != 0 {
			t.Fatalf("admitted %v while every account is parked", got)
		}
		holds, err := producer.Holds(ctx)
		if err != nil || len(holds) != 1 || holds[0].Account != "" || holds[0].StatusCode != 401 {
			t.Fatalf("holds = %+v, %v; want the all-accounts park once", holds, err)
		}
		if st, _ := producer.Stats(ctx); st.AllParked == "" {
			t.Errorf("stats %+v: all-accounts park not shown", st)
		}
		if ok, err := producer.Resume(ctx, ""); err != nil || !ok {
			t.Fatalf("Resume = %v, %v", ok, err)
		}
		got, _ := admit(t, worker)
		if len(got) != 3 {
			t.Fatalf("after resume admitted %v; want one per account", got)
		}
		// Found by id alone, whichever shard holds it.
		for _, a := range accts {
			st, ok, err := producer.Update(ctx, a+"-0")
			if err != nil || !ok || st.State != "admitted" || st.Account != a {
				t.Errorf("Update(%s-0) = %+v, %v, %v", a, st, ok, err)
			}
		}
		states, err := producer.States(ctx, []string{accts[0] + "-0", accts[2] + "-0", "nope"})
		if diff := cmp.Diff([]string{"admitted", "admitted", ""}, states); err != nil || diff != "" {
			t.Errorf("States (-want +got):\n%s %v", diff, err)
		}
		// A payload that could not be read is finished by id alone.
		if ok, err := worker.Finish(ctx, "", accts[1]+"-0", AnyGeneration); err != nil || !ok {
			t.Errorf("Finish by id alone = %v, %v", ok, err)
		}
	})
}

// TestShardCountChangesOnlyWhenDrained: a worker naming another count is
// refused while updates wait; a producer that read the old count is
// re-routed once the count changes.
func TestShardCountChangesOnlyWhenDrained(t *testing.T) {
	t.Parallel()
	backends(t, func(t *testing.T, rdb redis.UniversalClient) {
		ctx := context.Background()
		one, producer, _ := shardTest(t, rdb, 1, Config{})
		accts := accountsInShards(1, 1, 1)
		add(t, producer, "w1", accts[1], "o")

		three := New(rdb, Config{Shards: 3})
		err := three.Configure(ctx)
		if !errors.Is(err, ErrShards) || !strings.Contains(err.Error(), "--shards 1") {
			t.Fatalf("Configure(3) with an update waiting = %v; want ErrShards naming --shards 1", err)
		}
		if n, _ := producer.Shards(ctx); n != 1 {
			t.Fatalf("after a refused change producers route by %d shards; want 1", n)
		}
		if _, err := one.Finish(ctx, accts[1], "w1", AnyGeneration); err != nil {
			t.Fatal(err)
		}
		if err := three.Configure(ctx); err != nil {
			t.Fatalf("Configure(3) when drained: %v", err)
		}
		// producer still routes by 1 shard: its add is refused and re-routed.
		add(t, producer, "w2", accts[1], "o")
		if n, _ := producer.Shards(ctx); n != 3 {
			t.Errorf("producer routes by %d shards after the change; want 3", n)
		}
		if n, _ := rdb.Exists(ctx, shardBase("orgsync", 1)+"upd:w2").Result(); n != 1 {
			t.Errorf("w2 is not in shard 1, its account's")
		}
		if err := New(rdb, Config{Shards: 1}).Configure(ctx); !errors.Is(err, ErrShards) {
			t.Errorf("Configure(1) with w2 waiting in shard 1 = %v; want ErrShards", err)
		}
	})
}

// TestTokenSlotsGoToAccountsNotShards: under the token's limit, a shard
// with two busy accounts gets twice the slots of a shard with one, so each
// account gets its turn as it would with one shard.
func TestTokenSlotsGoToAccountsNotShards(t *testing.T) {
	t.Parallel()
	backends(t, func(t *testing.T, rdb redis.UniversalClient) {
		worker, producer, clk := shardTest(t, rdb, 3, Config{Token: ratelimit.Limit{Requests: 5, Window: time.Second}})
		accts := accountsInShards(2, 1, 1)
		const each = 30
		for _, a := range accts {
			for i := range each {
				add(t, producer, fmt.Sprint(a, "-", i), a, fmt.Sprint("o", i))
			}
		}
		order := oneAtATime(t, worker, clk, 60)
		got := map[string]int{}
		for _, id := range order {
			a, _, _ := strings.Cut(id, "-")
			got[a]++
		}
		for _, a := range accts {
			if got[a] < 12 || got[a] > 18 {
				t.Errorf("slots per account over 60: %v; want about 15 each (shard %d's %s got %d)", got, ShardOf(a, 3), a, got[a])
			}
		}
		if got := clk.now().Sub(t0); got != 59*200*time.Millisecond {
			t.Errorf("60 admissions took %v; want 59 intervals of 200ms", got)
		}
	})
}

// TestTokenBurstAloneInOneShard: a shard alone with work takes every slot
// the token's burst allows in one pass; fair shares cap nothing then.
func TestTokenBurstAloneInOneShard(t *testing.T) {
	t.Parallel()
	backends(t, func(t *testing.T, rdb redis.UniversalClient) {
		worker, producer, clk := shardTest(t, rdb, 3, Config{Token: ratelimit.Limit{Requests: 100, Window: time.Second}, TokenBurst: 10})
		a := accountsInShards(0, 1, 0)[0]
		for i := range 30 {
			add(t, producer, fmt.Sprint(a, "-", i), a, fmt.Sprint("o", i))
		}
		for pass := range 3 {
			if got, _ := admit(t, worker); len(got) != 10 {
				t.Errorf("pass %d admitted %d; want the token's burst of 10", pass, len(got))
			}
			clk.add(100 * time.Millisecond) // ten more slots
		}
	})
}

// TestConfigureCompletesAChangeCutShort: shard 0, whose count producers
// read, is written last, so a change cut short (here: shard 2 already at 3,
// shard 0 still at 1) is completed by the next start rather than left with
// the shards disagreeing.
func TestConfigureCompletesAChangeCutShort(t *testing.T) {
	t.Parallel()
	backends(t, func(t *testing.T, rdb redis.UniversalClient) {
		ctx := context.Background()
		if err := rdb.Set(ctx, shardBase("orgsync", 2)+"shards", "3", 0).Err(); err != nil {
			t.Fatal(err)
		}
		if err := New(rdb, Config{Shards: 3}).Configure(ctx); err != nil {
			t.Fatal(err)
		}
		for i := range 3 {
			if v, _ := rdb.Get(ctx, shardBase("orgsync", i)+"shards").Result(); v != "3" {
				t.Errorf("shard %d records %q; want 3", i, v)
			}
		}
		producer := New(rdb, Config{})
		accts := accountsInShards(1, 1, 1)
		for _, a := range accts {
			add(t, producer, a+"-0", a, "o")
		}
		if st, err := producer.Stats(ctx); err != nil || st.Shards != 3 || st.Scheduled != 3 {
			t.Errorf("stats %+v, %v; want 3 shards, 3 accounts scheduled", st, err)
		}
	})
}
