// Package circuit is a circuit breaker on upstream health, kept in Redis so
// that every worker process shares it. When most recent requests fail with
// transient errors (5xx, timeouts, refused connections) it opens: nothing is
// sent but one probe per probe interval, and updates wait without spending
// retry budget. When a probe succeeds it closes, and for a ramp period only a
// growing fraction of updates go through, so the backlog drains promptly
// without a stampede.
package circuit

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
)

// Defaults.
const (
	DefaultWindow        = 10 * time.Second
	DefaultMinFailures   = 20
	DefaultMinAccounts   = 2
	DefaultThreshold     = 0.5
	DefaultProbeInterval = 2 * time.Second
	DefaultRamp          = 5 * time.Second
	DefaultMaxWait       = 15 * time.Second
	DefaultSuccessFlush  = 100 * time.Millisecond
)

// Config configures a Breaker. Zero fields take the defaults.
type Config struct {
	Window      time.Duration // outcomes older than this are forgotten
	MinFailures int           // failures in the window before the breaker may open
	// MinAccounts is how many accounts must have failed in the window before
	// the breaker may open: one account's failing provider holds back that
	// account's lane (admission), not everyone's.
	MinAccounts   int
	Threshold     float64       // failure fraction in the window that opens it
	ProbeInterval time.Duration // one probe request per interval while open
	Ramp          time.Duration // after closing, the admitted fraction grows from 10 % to 100 % over this
	MaxWait       time.Duration // the longest an update is told to wait while open
	// SuccessFlush is how late a success may reach Redis: successes are
	// counted in the process and recorded together (Run), since a success
	// opens nothing. A failure or a probe's answer is recorded at once,
	// with the successes counted before it.
	SuccessFlush time.Duration
	KeyPrefix    string
	Disabled     bool
}

// Breaker is the shared circuit breaker. Safe for concurrent use.
type Breaker struct {
	rdb redis.UniversalClient
	c   Config
	key string
	// successes counted here and not yet recorded in Redis
	successes atomic.Int64
}

// New returns a Breaker on rdb.
func New(rdb redis.UniversalClient, c Config) *Breaker {
	if c.Window <= 0 {
		c.Window = DefaultWindow
	}
	if c.MinFailures <= 0 {
		c.MinFailures = DefaultMinFailures
	}
	if c.MinAccounts <= 0 {
		c.MinAccounts = DefaultMinAccounts
	}
	if c.Threshold <= 0 || c.Threshold > 1 {
		c.Threshold = DefaultThreshold
	}
	if c.ProbeInterval <= 0 {
		c.ProbeInterval = DefaultProbeInterval
	}
	if c.Ramp < 0 {
		c.Ramp = 0
	} else if c.Ramp == 0 {
		c.Ramp = DefaultRamp
	}
	if c.MaxWait <= 0 {
		c.MaxWait = DefaultMaxWait
	}
	if c.SuccessFlush <= 0 {
		c.SuccessFlush = DefaultSuccessFlush
	}
	if c.KeyPrefix == "" {
		c.KeyPrefix = "orgsync"
	}
	return &Breaker{rdb: rdb, c: c, key: c.KeyPrefix + ":{circuit}"}
}

// State is the breaker's state as operators see it.
type State struct {
	Open     bool      `json:"open"`
	OpenedAt time.Time `json:"opened_at,omitzero"`
	ClosedAt time.Time `json:"closed_at,omitzero"`
	Reason   string    `json:"reason,omitempty"`
}

// Decision says whether one request may go.
type Decision struct {
	Allow  bool
	Probe  bool          // the request is the open breaker's probe
	Wait   time.Duration // when not allowed: how long to wait before trying again
	Reason string
}

// allowScript: closed -> allow (ramping after a close); open -> one probe per
// interval, everyone else waits.
// KEYS[1] state hash. ARGV: probe_interval_ms, ramp_ms. Returns {code, open_ms, since_close_ms}:
// code 0 = allow, 1 = allow as probe, 2 = wait (open), 3 = ramping (caller decides by fraction).
var allowScript = redis.NewScript(`
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local st = redis.call('HMGET', KEYS[1], 'open', 'opened_at', 'closed_at', 'probe_until')
if st[1] == '1' then
  local opened = tonumber(st[2] or now)
  if tonumber(st[4] or '0') <= now then
    redis.call('HSET', KEYS[1], 'probe_until', now + tonumber(ARGV[1]))
    return {1, now - opened, 0}
  end
  return {2, now - opened, 0}
end
local closed = tonumber(st[3] or '0')
if closed > 0 and now - closed < tonumber(ARGV[2]) then
  return {3, 0, now - closed}
end
return {0, 0, 0}
`)

// ProbeInterval is the effective interval between probes while open.
func (b *Breaker) ProbeInterval() time.Duration { return b.c.ProbeInterval }

// Allow asks whether a request may be sent now.
func (b *Breaker) Allow(ctx context.Context) (Decision, error) {
	if b.c.Disabled {
		return Decision{Allow: true}, nil
	}
	res, err := allowScript.Run(ctx, b.rdb, []string{b.key}, b.c.ProbeInterval.Milliseconds(), b.c.Ramp.Milliseconds()).Int64Slice()
	if err != nil {
		return Decision{}, fmt.Errorf("circuit breaker: %w", err)
	}
	openFor := time.Duration(res[1]) * time.Millisecond
	switch res[0] {
	case 1:
		return Decision{Allow: true, Probe: true, Reason: "circuit open: this request is the probe"}, nil
	case 2:
		// Wait longer the longer the outage, up to MaxWait, spread out so the
		// waiting updates do not all come back in the same second.
		w := min(max(openFor/2, b.c.ProbeInterval), b.c.MaxWait)
		w += time.Duration(rand.Int64N(int64(w/2) + 1))
		return Decision{Wait: w, Reason: fmt.Sprintf("circuit open for %s: upstream failing; probing every %s", openFor.Round(time.Second), b.c.ProbeInterval)}, nil
	case 3:
		since := time.Duration(res[2]) * time.Millisecond
		frac := 0.1 + 0.9*float64(since)/float64(b.c.Ramp)
		if rand.Float64() < frac {
			return Decision{Allow: true}, nil
		}
		w := time.Second + time.Duration(rand.Int64N(int64(b.c.Ramp-since)+1))
		return Decision{Wait: w, Reason: fmt.Sprintf("circuit closed %s ago: ramping up (%.0f%% admitted)", since.Round(time.Second), frac*100)}, nil
	}
	return Decision{Allow: true}, nil
}

// recordScript counts an outcome in one-second buckets and opens or closes
// the breaker. KEYS[1] state hash, KEYS[2] bucket hash (fields f<sec> and
// n<sec>: failures and requests of that second), KEYS[3] the failing accounts
// (zset by last failure). ARGV: failed (1, 0, or - for no outcome: only
// the successes counted before), probe (0/1), window_s,
// min_failures, threshold, account, min_accounts, successes (counted before
// this outcome, recorded with it).
// Returns 1 when this call opened the breaker, -1 when it closed it, else 0.
var recordScript = redis.NewScript(`
local t = redis.call('TIME')
local sec = tonumber(t[1])
local now = sec * 1000 + math.floor(tonumber(t[2]) / 1000)
local failed = ARGV[1] == '1'
local probe = ARGV[2] == '1'
local window = tonumber(ARGV[3])
local open = redis.call('HGET', KEYS[1], 'open') == '1'
if open then
  if probe and not failed then
    redis.call('HSET', KEYS[1], 'open', '0', 'closed_at', now, 'probe_until', 0)
    redis.call('DEL', KEYS[2])
    return -1
  end
  return 0
end
local count = tonumber(ARGV[8])
if ARGV[1] ~= '-' then count = count + 1 end
if count == 0 then return 0 end
local first = redis.call('HINCRBY', KEYS[2], 'n' .. sec, count) == count
if failed then redis.call('HINCRBY', KEYS[2], 'f' .. sec, 1) end
-- A success opens nothing: it is counted, and only a second's first request
-- keeps the buckets alive and pruned (they hold at most a window of seconds);
-- a failure prunes, counts the window and may open the circuit.
if not failed and not first then return 0 end
redis.call('PEXPIRE', KEYS[2], (window + 2) * 1000)
local all = redis.call('HGETALL', KEYS[2])
local n, f = 0, 0
for i = 1, #all, 2 do
  local s = tonumber(string.sub(all[i], 2))
  if s > sec - window then
    if string.sub(all[i], 1, 1) == 'n' then n = n + tonumber(all[i+1]) else f = f + tonumber(all[i+1]) end
  else
    redis.call('HDEL', KEYS[2], all[i])
  end
end
if not failed then return 0 end
-- Failing accounts of the window, by their last failure.
redis.call('ZADD', KEYS[3], now, ARGV[6])
redis.call('PEXPIRE', KEYS[3], (window + 2) * 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now - window * 1000)
if f >= tonumber(ARGV[4]) and f >= tonumber(ARGV[5]) * n
    and redis.call('ZCARD', KEYS[3]) >= tonumber(ARGV[7]) then
  redis.call('HSET', KEYS[1], 'open', '1', 'opened_at', now, 'probe_until', now + 1000, 'reason', f .. ' of ' .. n .. ' requests failed in ' .. window .. 's')
  return 1
end
return 0
`)

// Record counts one request's outcome for account: failed means a transient failure
// (5xx, timeout, connection error); anything else proves the upstream
// reachable. It reports whether the breaker opened or closed. A success
// that is not the probe is only counted here, and reaches Redis with the
// next failure, probe or flush (Run), at most SuccessFlush later.
func (b *Breaker) Record(ctx context.Context, account string, failed, probe bool) (opened, closed bool, err error) {
	if b.c.Disabled {
		return false, false, nil
	}
	if !failed && !probe {
		b.successes.Add(1)
		return false, false, nil
	}
	return b.record(ctx, account, boolArg(failed), probe)
}

// noOutcome is record's outcome for a flush: only the successes counted.
const noOutcome = "-"

// record sends an outcome (the script's first argument) to Redis with the
// successes counted before it; on an error they are counted again.
func (b *Breaker) record(ctx context.Context, account, outcome string, probe bool) (opened, closed bool, err error) {
	win := int64(b.c.Window / time.Second)
	if win < 1 {
		win = 1
	}
	k := b.successes.Swap(0)
	n, err := recordScript.Run(ctx, b.rdb, []string{b.key, b.key + ":buckets", b.key + ":failing"},
		outcome, boolArg(probe), win, b.c.MinFailures, strconv.FormatFloat(b.c.Threshold, 'f', -1, 64),
		account, b.c.MinAccounts, k).Int64()
	if err != nil {
		b.successes.Add(k)
		return false, false, fmt.Errorf("circuit breaker: %w", err)
	}
	return n == 1, n == -1, nil
}

// Flush records the successes counted so far.
func (b *Breaker) Flush(ctx context.Context) error {
	if b.c.Disabled || b.successes.Load() == 0 {
		return nil
	}
	_, _, err := b.record(ctx, "", noOutcome, false)
	return err
}

// Run records the counted successes every SuccessFlush until ctx ends, then
// once more.
func (b *Breaker) Run(ctx context.Context) {
	t := time.NewTicker(b.c.SuccessFlush)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
			_ = b.Flush(fctx)
			cancel()
			return
		case <-t.C:
			_ = b.Flush(ctx) // Redis trouble: the count waits for the next flush
		}
	}
}

// State reads the breaker's state.
func (b *Breaker) State(ctx context.Context) (State, error) {
	m, err := b.rdb.HGetAll(ctx, b.key).Result()
	if err != nil {
		return State{}, fmt.Errorf("circuit breaker: %w", err)
	}
	st := State{Open: m["open"] == "1", Reason: m["reason"]}
	if ms, err := strconv.ParseInt(m["opened_at"], 10, 64); err == nil && st.Open {
		st.OpenedAt = time.UnixMilli(ms).UTC()
	}
	if ms, err := strconv.ParseInt(m["closed_at"], 10, 64); err == nil && ms > 0 {
		st.ClosedAt = time.UnixMilli(ms).UTC()
	}
	return st, nil
}

// Reset closes the breaker at once (an operator's override).
func (b *Breaker) Reset(ctx context.Context) error {
	return b.rdb.Del(ctx, b.key, b.key+":buckets").Err()
}

func boolArg(v bool) string {
	if v {
		return "1"
	}
	return "0"
}
