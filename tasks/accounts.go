package tasks

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"time"

	"github.com/redis/go-redis/v9"
)

// Kinds of account hold.
const (
	HoldRateLimited = "rate_limited" // until a time: Truto or the provider said wait
	HoldParked      = "parked"       // until an operator resumes the account
)

// AllAccounts is the account name of a hold on every account: Truto rejected
// the API token itself, so no account can be served until an operator fixes
// the token and runs `enqueue accounts resume '*'`. It is reserved: no update
// may name it as its account (ValidateAccount).
const AllAccounts = "*"

// allAccountsField is the field of the holds hash that stores the hold on
// every account. Account ids cannot contain control characters, so no account
// id can be this field, whatever got past validation.
const allAccountsField = "\x00all-accounts"

// legacyAllAccountsField is where workers before allAccountsField stored the
// hold on every account. It is still honoured, so a hold set by such a worker
// during a rolling upgrade keeps every account waiting, and
// ResumeAccount(AllAccounts) lifts it too.
const legacyAllAccountsField = "*"

// checkHoldAccount accepts AllAccounts and every valid account id, and
// nothing else, so no name can reach the field of the hold on every account.
func checkHoldAccount(account string) error {
	if account == AllAccounts {
		return nil
	}
	return ValidateAccount(account)
}

// holdField is the field of the holds hash that stores account's hold.
func holdField(account string) string {
	if account == AllAccounts {
		return allAccountsField
	}
	return account
}

// Hold is why an integrated account's updates are waiting.
type Hold struct {
	Account    string    `json:"account"`
	Kind       string    `json:"kind"`
	Reason     string    `json:"reason"`
	StatusCode int       `json:"status_code,omitempty"`
	Since      time.Time `json:"since"`
	// Until is when a rate-limit hold ends; zero for a parked account.
	Until time.Time `json:"until,omitzero"`
}

func (s *Store) holdsKey() string { return s.prefix + ":{accounts}:holds" }

// holdScript sets a hold unless a stronger one is in force: a park always
// wins over a rate limit, and a rate limit only ever extends.
var holdScript = redis.NewScript(`
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if cur then
  local c = cjson.decode(cur)
  if c.kind == 'parked' then return 0 end
  if ARGV[3] == 'rate_limited' and tonumber(c.until_ms or 0) >= tonumber(ARGV[4]) then return 0 end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return 1
`)

type storedHold struct {
	Hold
	UntilMS int64 `json:"until_ms,omitempty"`
}

// PauseAccount makes every worker hold the account's updates until until.
func (s *Store) PauseAccount(ctx context.Context, account string, until time.Time, status int, reason string) error {
	return s.setHold(ctx, Hold{Account: account, Kind: HoldRateLimited, Reason: reason, StatusCode: status, Since: s.now(), Until: until})
}

// ParkAccount holds the account's updates until ResumeAccount.
func (s *Store) ParkAccount(ctx context.Context, account string, status int, reason string) error {
	return s.setHold(ctx, Hold{Account: account, Kind: HoldParked, Reason: reason, StatusCode: status, Since: s.now()})
}

func (s *Store) setHold(ctx context.Context, h Hold) error {
	if err := checkHoldAccount(h.Account); err != nil {
		return fmt.Errorf("hold account: %w", err)
	}
	sh := storedHold{Hold: h}
	if !h.Until.IsZero() {
		sh.UntilMS = h.Until.UnixMilli()
	}
	b, err := json.Marshal(sh)
	if err != nil {
		return err
	}
	if err := holdScript.Run(ctx, s.rdb, []string{s.holdsKey()}, holdField(h.Account), b, h.Kind, sh.UntilMS).Err(); err != nil {
		return fmt.Errorf("hold account %s: %w", h.Account, err)
	}
	return nil
}

// ResumeAccount lifts any hold on the account; it reports whether there was one.
func (s *Store) ResumeAccount(ctx context.Context, account string) (bool, error) {
	if err := checkHoldAccount(account); err != nil {
		return false, fmt.Errorf("resume account: %w", err)
	}
	fields := []string{holdField(account)}
	if account == AllAccounts {
		fields = append(fields, legacyAllAccountsField)
	}
	n, err := s.rdb.HDel(ctx, s.holdsKey(), fields...).Result()
	if err != nil {
		return false, fmt.Errorf("resume account %s: %w", account, err)
	}
	return n > 0, nil
}

// AccountHold returns the hold in force on the account (or on all accounts),
// if any. Expired rate-limit holds are reported as none.
func (s *Store) AccountHold(ctx context.Context, account string) (Hold, bool, error) {
	raws, err := s.rdb.HMGet(ctx, s.holdsKey(), allAccountsField, legacyAllAccountsField, holdField(account)).Result()
	if err != nil {
		return Hold{}, false, fmt.Errorf("read hold of account %s: %w", account, err)
	}
	for _, raw := range raws {
		str, ok := raw.(string)
		if !ok {
			continue
		}
		var sh storedHold
		if json.Unmarshal([]byte(str), &sh) != nil {
			continue
		}
		if sh.Kind == HoldRateLimited && !sh.Until.After(s.now()) {
			continue
		}
		return sh.Hold, true, nil
	}
	return Hold{}, false, nil
}

// Holds lists the accounts that are parked or rate limited now, parked first.
func (s *Store) Holds(ctx context.Context) ([]Hold, error) {
	m, err := s.rdb.HGetAll(ctx, s.holdsKey()).Result()
	if err != nil {
		return nil, fmt.Errorf("list account holds: %w", err)
	}
	now := s.now()
	var out []Hold
	for _, raw := range m {
		var sh storedHold
		// Expired rate-limit holds stay in the hash (one field per account that
		// was ever limited) and are simply not in force.
		if json.Unmarshal([]byte(raw), &sh) != nil || (sh.Kind == HoldRateLimited && !sh.Until.After(now)) {
			continue
		}
		out = append(out, sh.Hold)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Kind != out[j].Kind {
			return out[i].Kind == HoldParked
		}
		return out[i].Account < out[j].Account
	})
	return out, nil
}
