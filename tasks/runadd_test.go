package tasks

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/google/go-cmp/cmp"
	"github.com/redis/go-redis/v9"

	"github.com/orgsync/orgsync/internal/redistest"
)

// runAddOneByOne is run.lua's add as it was before it read and wrote the
// run's hashes once per call: every entry read and written on its own. It is
// the reference the batched add must match.
var runAddOneByOne = redis.NewScript(`
local META, LINES, IDS = KEYS[1], KEYS[2], KEYS[3]
local op = ARGV[1]
local now = ARGV[2]
local ttl = tonumber(ARGV[3])
local counter = {c = 'completed', d = 'dead', p = 'purged'}

local function split(v)
  local bar = string.find(v, '|', 1, true)
  if not bar then return v, '' end
  return string.sub(v, 1, bar - 1), string.sub(v, bar + 1)
end

local function num(f)
  return tonumber(redis.call('HGET', META, f) or '0') or 0
end

local function keep()
  redis.call('PEXPIRE', META, ttl)
  redis.call('PEXPIRE', LINES, ttl)
  redis.call('PEXPIRE', IDS, ttl)
end

local function reopen()
  redis.call('HDEL', META, 'finished', 'announced', 'announcing')
end

if op == 'add' then
  -- ARGV[4] the run's name, then triples: line (0: the next free one), task id, key.
  -- Returns, per entry: its line and its state before ("new" if it was not in the run).
  if redis.call('EXISTS', META) == 0 then
    redis.call('HSET', META, 'name', ARGV[4], 'started', now, 'total', 0, 'next_line', 0)
  end
  local out = {}
  local added = false
  for i = 5, #ARGV, 3 do
    local line, id, key = tonumber(ARGV[i]), ARGV[i + 1], ARGV[i + 2]
    local cur = redis.call('HGET', IDS, id)
    if cur then
      local l, st = split(cur)
      table.insert(out, tonumber(l))
      table.insert(out, st)
    else
      if line <= 0 then
        line = redis.call('HINCRBY', META, 'next_line', 1)
      elseif line > num('next_line') then
        redis.call('HSET', META, 'next_line', line)
      end
      local old = redis.call('HGET', LINES, line)
      if old then
        local tab = string.find(old, '\t', 1, true)
        local oldid = string.sub(old, 1, tab - 1)
        local oc = redis.call('HGET', IDS, oldid)
        if oc then
          local _, ost = split(oc)
          if counter[ost] then redis.call('HINCRBY', META, counter[ost], -1) end
          redis.call('HDEL', IDS, oldid)
          redis.call('HINCRBY', META, 'total', -1)
        end
      end
      redis.call('HSET', LINES, line, id .. '\t' .. key)
      redis.call('HSET', IDS, id, line .. '|')
      redis.call('HINCRBY', META, 'total', 1)
      added = true
      table.insert(out, line)
      table.insert(out, 'new')
    end
  end
  if added then
    redis.call('HSET', META, 'sealed', 0)
    reopen()
  end
  keep()
  return out
end

return redis.error_reply('reference: add only')
`)

// TestRunAddIsOneByOne: run.lua's add, which reads the run's lines and ids
// in one HMGET each and writes them once, answers and leaves the run as
// adding the entries one at a time did: entries already in the run, repeated
// in the batch, lines given and not, lines past next_line and in its gaps,
// lines replaced (their old update ended or not, or itself added earlier in
// the batch), updates whose line was replaced earlier in the batch added
// again, on a new run and on one with history, on real Redis and miniredis.
func TestRunAddIsOneByOne(t *testing.T) {
	t.Parallel()
	backends := map[string]func(t *testing.T) redis.UniversalClient{
		"redis": func(t *testing.T) redis.UniversalClient { return redistest.Start(t).Client() },
		"miniredis": func(t *testing.T) redis.UniversalClient {
			c := redis.NewClient(&redis.Options{Addr: miniredis.RunT(t).Addr()})
			t.Cleanup(func() { _ = c.Close() })
			return c
		},
	}
	for name, connect := range backends {
		for _, history := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s, history %v", name, history), func(t *testing.T) {
				t.Parallel()
				rdb := connect(t)
				ctx := context.Background()
				call := func(sc *redis.Script, side string, entries [][3]any) []any {
					t.Helper()
					keys := []string{side + ":meta", side + ":lines", side + ":ids"}
					args := []any{"add", 1_800_000_000_000, time.Hour.Milliseconds(), "r"}
					for _, e := range entries {
						args = append(args, e[:]...)
					}
					out, err := sc.Run(ctx, rdb, keys, args...).Slice()
					if err != nil {
						t.Fatalf("%s: %v", side, err)
					}
					return out
				}
				for _, side := range []string{"many", "one"} {
					if !history {
						continue
					}
					var pre [][3]any
					for i := 1; i <= 6; i++ {
						pre = append(pre, [3]any{i, fmt.Sprint("u", i), "k"})
					}
					pre = append(pre, [3]any{10, "u10", "k"})
					call(runScript, side, pre)
					states := []any{"setmany", 1_800_000_000_000, time.Hour.Milliseconds(), "u2", "c", "u3", "d", "u4", "p", "u10", "c"}
					if err := runScript.Run(ctx, rdb, []string{side + ":meta", side + ":lines", side + ":ids"}, states...).Err(); err != nil {
						t.Fatal(err)
					}
					if err := runScript.Run(ctx, rdb, []string{side + ":meta", side + ":lines", side + ":ids"}, "seal", 1_800_000_000_000, time.Hour.Milliseconds()).Err(); err != nil {
						t.Fatal(err)
					}
				}
				batch := runAddBatch()
				got := call(runScript, "many", batch)
				want := call(runAddOneByOne, "one", batch)
				if diff := cmp.Diff(want, got); diff != "" {
					t.Errorf("answers (-one by one +batched):\n%s", diff)
				}
				for _, k := range []string{"meta", "lines", "ids"} {
					if diff := cmp.Diff(dumpHash(t, rdb, "one:"+k), dumpHash(t, rdb, "many:"+k)); diff != "" {
						t.Errorf("%s (-one by one +batched):\n%s", k, diff)
					}
				}
			})
		}
	}
}

// runAddBatch is the batch: each case by hand, then a deterministic mix.
func runAddBatch() [][3]any {
	b := [][3]any{
		{0, "n1", "k1"},    // the next free line
		{3, "n3", "k3"},    // replaces line 3 (its update dead, with history)
		{2, "u2", "k2"},    // already in (completed, with history)
		{8, "n8", "k8"},    // a gap below next_line
		{0, "n2", "k2"},    // the next free line
		{15, "n15", "k15"}, // past next_line
		{0, "n16", "k16"},  // after it
		{8, "n8b", "k8b"},  // replaces n8, added above
		{0, "n8", "k8"},    // n8 again, out of the run since: a new line
		{4, "n4", "k4"},    // replaces line 4 (purged, with history)
		{0, "n1", "k1"},    // repeated: where it landed
		{5, "u6", "k6"},    // already in at line 6 (with history)
		{6, "n6", "k6"},    // replaces u6
		{0, "u6", "k6"},    // u6 again: a new line
		{1, "n-1", "k"},    // replaces line 1
		{1, "n-1b", "k"},   // and again
		{20, "u10", "k10"}, // already in at line 10 (completed, with history)
		{10, "n10", "k10"}, // replaces it
		{21, "u3", "k3"},   // u3, whose line was replaced: new at 21
	}
	for i := range 120 {
		line := 0
		if i%3 != 0 {
			line = 22 + (i*7)%40
		}
		b = append(b, [3]any{line, fmt.Sprint("m", (i*11)%90), fmt.Sprint("key ", i)})
	}
	return append(b, [3]any{500, "last", "k"}) // next_line last moved by a line given
}

func dumpHash(t *testing.T, rdb redis.UniversalClient, key string) []string {
	t.Helper()
	ctx := context.Background()
	h, err := rdb.HGetAll(ctx, key).Result()
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for f, v := range h {
		out = append(out, f+"="+v)
	}
	slices.Sort(out)
	if d := rdb.PTTL(ctx, key).Val(); d > 0 {
		out = append(out, "(expires)")
	}
	return out
}
