// Package ratelimit keeps Truto's request limits (per integrated account and
// per API token) in Redis, so that every worker process together stays under
// them. It uses GCRA (the generic cell rate algorithm, as go-redis/redis_rate
// does) with a burst of one: requests are spread evenly, one every
// Window/Requests, which keeps any sliding window of Truto's under its limit.
// A headroom fraction (default 5 %) absorbs network jitter between the moment
// a worker takes its slot and the moment Truto counts the request.
package ratelimit

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// Limit is Requests per Window. A zero Limit means no limit.
type Limit struct {
	Requests int
	Window   time.Duration
}

// Defaults: Truto's documented limits.
var (
	DefaultAccountLimit = Limit{Requests: 50, Window: 10 * time.Second}
	DefaultTokenLimit   = Limit{Requests: 500, Window: 10 * time.Second}
)

// DefaultHeadroom is the fraction of each limit left unused.
const DefaultHeadroom = 0.05

// DefaultMaxReserve is the longest a caller is asked to wait in place for a
// slot; longer waits are handed back to the queue instead.
const DefaultMaxReserve = time.Second

// IsZero reports whether l means "no limit".
func (l Limit) IsZero() bool { return l.Requests <= 0 || l.Window <= 0 }

// String renders l as the flag form N/window ("0" for none).
func (l Limit) String() string {
	if l.IsZero() {
		return "0"
	}
	return strconv.Itoa(l.Requests) + "/" + l.Window.String()
}

// Parse reads the flag form: "50/10s", "5/1s", or "0" for no limit.
func Parse(s string) (Limit, error) {
	s = strings.TrimSpace(s)
	if s == "0" {
		return Limit{}, nil
	}
	n, w, ok := strings.Cut(s, "/")
	reqs, err1 := strconv.Atoi(n)
	win, err2 := time.ParseDuration(w)
	if !ok || err1 != nil || err2 != nil || reqs < 1 || win <= 0 {
		return Limit{}, fmt.Errorf("%q: expected N/window such as 50/10s, or 0 for no limit", s)
	}
	return Limit{Requests: reqs, Window: win}, nil
}

// Limiter hands out the right to send.
type Limiter struct {
	rdb        redis.UniversalClient
	prefix     string
	account    Limit
	token      Limit
	tokenID    string
	headroom   float64
	maxReserve time.Duration
}

// Config configures a Limiter. Zero fields take the defaults, except the
// limits themselves: a zero Limit disables that limit.
type Config struct {
	Account    Limit
	Token      Limit
	TokenID    string  // names the API token's bucket; a fingerprint, never the token
	Headroom   float64 // fraction of each limit left unused; negative for none
	MaxReserve time.Duration
	KeyPrefix  string
}

// New returns a Limiter on rdb.
func New(rdb redis.UniversalClient, c Config) *Limiter {
	l := &Limiter{rdb: rdb, prefix: c.KeyPrefix, account: c.Account, token: c.Token, tokenID: c.TokenID,
		headroom: c.Headroom, maxReserve: c.MaxReserve}
	if l.prefix == "" {
		l.prefix = "orgsync"
	}
	if l.headroom == 0 {
		l.headroom = DefaultHeadroom
	}
	if l.headroom < 0 {
		l.headroom = 0
	}
	if l.maxReserve <= 0 {
		l.maxReserve = DefaultMaxReserve
	}
	if l.tokenID == "" {
		l.tokenID = "default"
	}
	return l
}

// interval is the spacing between requests under l, headroom included.
func (l *Limiter) interval(lim Limit) int64 {
	us := float64(lim.Window.Microseconds()) / float64(lim.Requests) / (1 - l.headroom)
	return int64(us + 0.5)
}

// reserveScript checks every bucket against the slowest one: if the earliest
// common slot is within max_reserve, it is taken in all of them and the wait
// returned; otherwise nothing is taken, and the update takes (or keeps) its
// place in the account's waiting list, whose length ahead of it says how far
// off its turn really is. Time comes from Redis, so workers on machines with
// skewed clocks agree.
//
// KEYS[1]: the account's waiting list; KEYS[2..]: the buckets' keys.
// ARGV[1]: max_reserve_us; ARGV[2]: the update's id; ARGV[3]: waiting-list
// horizon_ms; ARGV[3+i]: interval_us of KEYS[1+i].
// Returns {taken (0/1), wait_us, ahead}.
var reserveScript = redis.NewScript(`
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local nowms = math.floor(now / 1000)
local maxres = tonumber(ARGV[1])
local tats = {}
local wait = 0
for i = 2, #KEYS do
  local tat = tonumber(redis.call('GET', KEYS[i]) or '0')
  if tat < now then tat = now end
  tats[i] = tat
  if tat - now > wait then wait = tat - now end
end
if wait > maxres then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', nowms - tonumber(ARGV[3]))
  redis.call('ZADD', KEYS[1], 'NX', nowms, ARGV[2])
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
  return {0, wait, redis.call('ZRANK', KEYS[1], ARGV[2]) or 0}
end
redis.call('ZREM', KEYS[1], ARGV[2])
local at = now + wait
for i = 2, #KEYS do
  local interval = tonumber(ARGV[2 + i])
  local nt = math.max(tats[i], at) + interval
  redis.call('SET', KEYS[i], string.format('%.0f', nt), 'PX', math.floor((nt - now) / 1000) + 1000)
end
return {1, wait, 0}
`)

// waitingCushion is how many of an account's waiting updates come back at
// the next slot rather than at their estimated turn.
const waitingCushion = 10

// waitingHorizon is how long an entry stays in an account's waiting list
// without the update coming back (it completed elsewhere, expired, or was purged).
const waitingHorizon = 72 * time.Hour

// Reserve asks for a slot to send one request (of the update with id
// updateID) for account. When ok, the caller must wait wait (at most
// MaxReserve) and then send. When not ok, nothing was taken and wait is when
// the update's turn may come: the next slot, plus one interval for each
// update of the account that has been waiting longer (beyond the first ten,
// which all come back at the next slot so that one is always ready). The caller should put
// the update back for that long rather than hold a worker, so that an account
// with a deep backlog neither occupies the workers nor churns through the
// queue, and the others' updates flow past it.
func (l *Limiter) Reserve(ctx context.Context, account, updateID string) (ok bool, wait time.Duration, err error) {
	keys := []string{l.prefix + ":{ratelimit}:waiting:" + account}
	args := []any{l.maxReserve.Microseconds(), updateID, waitingHorizon.Milliseconds()}
	spacing := int64(0)
	if !l.token.IsZero() {
		keys = append(keys, l.prefix+":{ratelimit}:token:"+l.tokenID)
		args = append(args, l.interval(l.token))
		spacing = l.interval(l.token)
	}
	if !l.account.IsZero() {
		keys = append(keys, l.prefix+":{ratelimit}:account:"+account)
		args = append(args, l.interval(l.account))
		spacing = max(spacing, l.interval(l.account))
	}
	if len(keys) == 1 {
		return true, 0, nil
	}
	res, err := reserveScript.Run(ctx, l.rdb, keys, args...).Int64Slice()
	if err != nil {
		return false, 0, fmt.Errorf("rate limit of account %s: %w", account, err)
	}
	// The first few waiting updates all come back at the next slot, so one is
	// always ready to take it; those further back come back about when their
	// turn will be.
	ahead := max(res[2]-waitingCushion, 0)
	wait = time.Duration(res[1]+ahead*spacing) * time.Microsecond
	return res[0] == 1, wait, nil
}
