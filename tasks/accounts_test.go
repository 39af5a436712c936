package tasks

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/hibiken/asynq"
)

// TestReservedAccountCannotHoldEveryone: a payload naming the account "*"
// (one enqueued before the door refused it) is dead-lettered as malformed
// without a request, so an upstream 401 or 429 for it can never hold every
// account.
func TestReservedAccountCannotHoldEveryone(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		up   answer
	}{
		{"401 from the provider", answer{status: 401, body: `{"statusCode":401,"message":"reauth","truto_is_remote_error":true}`}},
		{"429 for an hour", answer{status: 429, header: map[string]string{"Retry-After": "3600"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t, Policy{}, tt.up)
			// Written as an old producer would have, past today's validation.
			raw := `{"v":1,"id":"org-1","integrated_account_id":"*","body":{},"idempotency_key":"star","enqueued_at":"2026-11-28T12:00:00Z"}`
			err := e.handler.ProcessTask(context.Background(), asynq.NewTask(TypeUpdateOrganization, []byte(raw)))
			if !errors.Is(err, asynq.SkipRetry) {
				t.Fatalf("err = %v, want a dead letter (SkipRetry)", err)
			}
			if got := e.lastEvent(); got.Class != ClassMalformed || got.Outcome != OutcomeDead {
				t.Errorf("event = %+v, want dead, malformed", got)
			}
			if n := e.up.count(); n != 0 {
				t.Errorf("upstream saw %d requests, want 0", n)
			}
			holds, err := e.store.Accounts().Holds(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			if len(holds) != 0 {
				t.Errorf("holds = %+v, want none", holds)
			}
		})
	}
}

// TestAllAccountsHold: the hold on every account lives where no account id
// can reach it and is lifted only by resuming "*".
func TestAllAccountsHold(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	tests := []struct {
		name string
		set  func(e *env) error
	}{
		{"parked by this version", func(e *env) error { return e.store.Accounts().Park(ctx, AllAccounts, 401, "token rejected") }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t, Policy{})
			if err := tt.set(e); err != nil {
				t.Fatal(err)
			}
			type held struct {
				Account string
				Held    bool
			}
			check := func(want bool) {
				t.Helper()
				var got, wants []held
				for _, a := range []string{"acct-1", "x"} {
					_, ok, err := e.store.Accounts().Hold(ctx, a)
					if err != nil {
						t.Fatal(err)
					}
					got, wants = append(got, held{a, ok}), append(wants, held{a, want})
				}
				if diff := cmp.Diff(wants, got); diff != "" {
					t.Errorf("holds (-want +got):\n%s", diff)
				}
			}
			check(true)
			// Resuming an account by any other name leaves everyone held.
			for _, a := range []string{"acct-1", "\x00all-accounts", "all"} {
				if ok, _ := e.store.Accounts().Resume(ctx, a); ok {
					t.Errorf("resume %q lifted a hold", a)
				}
				if err := e.store.Accounts().Park(ctx, "\x00all-accounts", 401, "x"); err == nil {
					t.Errorf("ParkAccount accepted an account id with a control character")
				}
			}
			check(true)
			if ok, err := e.store.Accounts().Resume(ctx, AllAccounts); err != nil || !ok {
				t.Fatalf("resume '*' = %v, %v; want it lifted", ok, err)
			}
			check(false)
		})
	}
}

// TestAccountHoldIsPerAccount: a 429 of one account holds that account only.
func TestAccountHoldIsPerAccount(t *testing.T) {
	t.Parallel()
	e := newEnv(t, Policy{})
	ctx := context.Background()
	if err := e.store.Accounts().Pause(ctx, "acct-1", e.now.Add(time.Hour), 429, "slow"); err != nil {
		t.Fatal(err)
	}
	holds, err := e.store.Accounts().Holds(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, h := range holds {
		got = append(got, h.Account)
	}
	if diff := cmp.Diff([]string{"acct-1"}, got); diff != "" {
		t.Errorf("held accounts (-want +got):\n%s", diff)
	}
}

// TestMigrateLegacyHolds: a park (and a running rate-limit hold) written by
// the version before admission still holds after the upgrade.
func TestMigrateLegacyHolds(t *testing.T) {
	t.Parallel()
	e := newEnv(t, Policy{})
	ctx := context.Background()
	key := "orgsync:{accounts}:holds"
	until := e.now.Add(time.Hour).UTC().Format(time.RFC3339)
	e.store.rdb.HSet(ctx, key,
		"acct-1", `{"account":"acct-1","kind":"parked","reason":"reauth","status_code":401}`,
		"acct-2", `{"account":"acct-2","kind":"rate_limited","reason":"429","status_code":429,"until":"`+until+`"}`,
		"acct-3", `{"account":"acct-3","kind":"rate_limited","reason":"old","until":"2020-01-01T00:00:00Z"}`,
		"\x00all-accounts", `{"account":"*","kind":"parked","reason":"token rejected","status_code":401}`)
	n, err := e.store.Accounts().MigrateLegacyHolds(ctx)
	if err != nil || n != 3 {
		t.Fatalf("MigrateLegacyHolds = %d, %v; want 3 moved", n, err)
	}
	holds, _ := e.store.Accounts().Holds(ctx)
	var got []string
	for _, h := range holds {
		got = append(got, h.Kind+" "+h.Account)
	}
	if diff := cmp.Diff([]string{"parked *", "parked acct-1", "rate_limited acct-2"}, got); diff != "" {
		t.Errorf("holds after the move (-want +got):\n%s", diff)
	}
	if n, _ := e.store.rdb.Exists(ctx, key).Result(); n != 0 {
		t.Error("the old holds hash is still there")
	}
}
