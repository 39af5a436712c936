package tasks

import (
	"context"
	"encoding/json"
	"errors"
	"sort"
	"time"
)

// An account's updates wait as a whole while it is held: parked (Truto or
// the provider refused its credentials, or the API token was rejected) until
// an operator resumes it, or rate limited until a time. Holds live in
// admission: a held account's lane is frozen, costing no runs and no Redis
// traffic per update.

// Kinds of account hold.
const (
	HoldRateLimited = "rate_limited" // until a time: Truto or the provider said wait
	HoldParked      = "parked"       // until an operator resumes the account
)

// AllAccounts is the account name of a hold on every account: Truto rejected
// the API token itself, so no account can be served until an operator fixes
// the token and runs `enqueue accounts resume '*'`. It is reserved: no update
// may name it as its account (ValidateAccount), and admission keeps the hold
// on every account apart from any account's.
const AllAccounts = "*"

// checkHoldAccount accepts AllAccounts and every valid account id, and
// nothing else.
func checkHoldAccount(account string) error {
	if account == AllAccounts {
		return nil
	}
	return ValidateAccount(account)
}

// admissionAccount maps AllAccounts to admission's name for every account.
func admissionAccount(account string) string {
	if account == AllAccounts {
		return ""
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

// Accounts holds and lifts account holds (Store.Accounts). The holds live in
// admission; this is their door: it checks account ids and maps AllAccounts.
type Accounts struct{ *base }

// Pause makes the account's updates wait until until, for every worker.
func (s *Accounts) Pause(ctx context.Context, account string, until time.Time, status int, reason string) error {
	if err := ValidateAccount(account); err != nil {
		return err
	}
	return s.adm.Hold(ctx, account, until, reason, status)
}

// Park holds the account's updates (AllAccounts: every account's)
// until Resume.
func (s *Accounts) Park(ctx context.Context, account string, status int, reason string) error {
	if err := checkHoldAccount(account); err != nil {
		return err
	}
	return s.adm.Park(ctx, admissionAccount(account), reason, status)
}

// Resume lifts any hold on the account; it reports whether there was one.
func (s *Accounts) Resume(ctx context.Context, account string) (bool, error) {
	if err := checkHoldAccount(account); err != nil {
		return false, err
	}
	return s.adm.Resume(ctx, admissionAccount(account))
}

// Hold returns the hold in force on the account (or on all
// accounts), if any.
func (s *Accounts) Hold(ctx context.Context, account string) (Hold, bool, error) {
	holds, err := s.Holds(ctx)
	if err != nil {
		return Hold{}, false, err
	}
	for _, h := range holds {
		if h.Account == AllAccounts || h.Account == account {
			return h, true, nil
		}
	}
	return Hold{}, false, nil
}

// Holds lists the holds in force, parked first.
func (s *Accounts) Holds(ctx context.Context) ([]Hold, error) {
	hs, err := s.adm.Holds(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]Hold, 0, len(hs))
	for _, h := range hs {
		a := h.Account
		if a == "" {
			a = AllAccounts
		}
		out = append(out, Hold{Account: a, Kind: h.Kind, Reason: h.Reason, StatusCode: h.StatusCode, Since: h.Since, Until: h.Until})
	}
	sort.SliceStable(out, func(i, j int) bool {
		if out[i].Kind != out[j].Kind {
			return out[i].Kind == HoldParked
		}
		return out[i].Account < out[j].Account
	})
	return out, nil
}

// MigrateLegacyHolds moves the holds a version before admission kept (a hash
// of account -> hold) into admission, so a park made before an upgrade still
// holds after it, and removes the hash. It returns how many it moved.
func (s *Accounts) MigrateLegacyHolds(ctx context.Context) (int, error) {
	key := s.prefix + ":{accounts}:holds"
	m, err := s.rdb.HGetAll(ctx, key).Result()
	if err != nil || len(m) == 0 {
		return 0, err
	}
	moved := 0
	for field, raw := range m {
		var h struct {
			Kind       string    `json:"kind"`
			Reason     string    `json:"reason"`
			StatusCode int       `json:"status_code"`
			Until      time.Time `json:"until"`
		}
		if json.Unmarshal([]byte(raw), &h) != nil {
			continue
		}
		account := field
		if field == "*" || field == "\x00all-accounts" {
			account = AllAccounts
		}
		switch {
		case h.Kind == HoldParked:
			err = s.Park(ctx, account, h.StatusCode, h.Reason)
		case h.Kind == HoldRateLimited && h.Until.After(s.now()) && account != AllAccounts:
			err = s.Pause(ctx, account, h.Until, h.StatusCode, h.Reason)
		default:
			continue
		}
		var ve *ValidationError
		if errors.As(err, &ve) {
			continue // an account id the door would refuse today: nothing to hold
		}
		if err != nil {
			return moved, err // keep the old hash: the next start tries again
		}
		moved++
	}
	return moved, s.rdb.Del(ctx, key).Err()
}
