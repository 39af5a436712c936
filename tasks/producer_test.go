package tasks

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"

	"github.com/orgsync/orgsync/trutoclient"
)

func newProducer(t *testing.T) (*Producer, *Store, *miniredis.Miniredis) {
	t.Helper()
	mr := miniredis.RunT(t)
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	t.Cleanup(func() { _ = rdb.Close() })
	store := NewStore(rdb)
	p := NewProducer(store)
	t.Cleanup(func() { _ = p.Close() })
	return p, store, mr
}

func TestEnqueueRefusesInvalidAndTouchesNothing(t *testing.T) {
	t.Parallel()
	long := strings.Repeat("x", 257)
	tests := []struct {
		name  string
		u     Update
		field string
	}{
		{"no id", Update{IntegratedAccountID: "a", Body: json.RawMessage(`{}`)}, "id"},
		{"long id", Update{ID: long, IntegratedAccountID: "a", Body: json.RawMessage(`{}`)}, "id"},
		{"control char", Update{ID: "a\nb", IntegratedAccountID: "a", Body: json.RawMessage(`{}`)}, "id"},
		{"no account", Update{ID: "x", Body: json.RawMessage(`{}`)}, "integrated_account_id"},
		{"no body", Update{ID: "x", IntegratedAccountID: "a"}, "body"},
		{"array body", Update{ID: "x", IntegratedAccountID: "a", Body: json.RawMessage(`[1]`)}, "body"},
		{"broken body", Update{ID: "x", IntegratedAccountID: "a", Body: json.RawMessage(`{"a":`)}, "body"},
		{"huge body", Update{ID: "x", IntegratedAccountID: "a", Body: json.RawMessage(`{"a":"` + strings.Repeat("y", MaxBodyBytes) + `"}`)}, "body"},
		{"bad format", Update{ID: "x", IntegratedAccountID: "a", Body: json.RawMessage(`{}`), Options: optionsWithFormat("xml")}, "options"},
		{"bad key", Update{ID: "x", IntegratedAccountID: "a", Body: json.RawMessage(`{}`), IdempotencyKey: "k\x01"}, "idempotency_key"},
		{"long key", Update{ID: "x", IntegratedAccountID: "a", Body: json.RawMessage(`{}`), IdempotencyKey: strings.Repeat("k", 256)}, "idempotency_key"},
	}
	p, _, mr := newProducer(t)
	for _, tc := range tests {
		_, err := p.Enqueue(context.Background(), tc.u)
		var ve *ValidationError
		if !errors.As(err, &ve) || ve.Field != tc.field {
			t.Errorf("%s: err = %v, want a ValidationError on %q", tc.name, err, tc.field)
		}
	}
	if keys := mr.Keys(); len(keys) != 0 {
		t.Errorf("invalid updates left keys in Redis: %v", keys)
	}
}

func TestEnqueueDuplicateKey(t *testing.T) {
	t.Parallel()
	p, store, _ := newProducer(t)
	ctx := context.Background()
	u := Update{ID: "org-1", IntegratedAccountID: "acct", Body: json.RawMessage(`{"name":"A"}`), IdempotencyKey: "k-1"}
	first, err := p.Enqueue(ctx, u)
	if err != nil || first.Status != "enqueued" || first.TaskID != TaskID("acct", "k-1") {
		t.Fatalf("first enqueue = %+v, %v", first, err)
	}
	second, err := p.Enqueue(ctx, u)
	if !errors.Is(err, ErrDuplicate) || second.Status != "duplicate" || second.TaskID != first.TaskID {
		t.Fatalf("second enqueue = %+v, %v; want a duplicate of %s", second, err, first.TaskID)
	}
	// Without a key, the same content is a new intent each time.
	u.IdempotencyKey = ""
	a, err1 := p.Enqueue(ctx, u)
	b, err2 := p.Enqueue(ctx, u)
	if err1 != nil || err2 != nil || a.TaskID == b.TaskID {
		t.Fatalf("keyless enqueues = %+v %v, %+v %v; want two tasks", a, err1, b, err2)
	}
	// A dead-lettered key stays taken after asynq forgets it.
	if err := store.DeadLetters().Put(ctx, DeadLetter{TaskID: TaskID("acct", "k-dead"), IdempotencyKey: "k-dead", DeadAt: time.Now()}); err != nil {
		t.Fatal(err)
	}
	u.IdempotencyKey = "k-dead"
	if _, err := p.Enqueue(ctx, u); !errors.Is(err, ErrDuplicate) || !strings.Contains(err.Error(), "dlq replay") {
		t.Errorf("enqueue of a dead-lettered key: err = %v, want a duplicate that says how to replay", err)
	}
}

func TestPayloadCarriesEverything(t *testing.T) {
	t.Parallel()
	p, store, _ := newProducer(t)
	ctx := context.Background()
	u := Update{ID: "a/../b", IntegratedAccountID: "acct", Body: json.RawMessage(`{"remote_data":{"x":1}}`),
		Options: optionsWithFormat("raw"), IdempotencyKey: "key-x"}
	at := time.Now().Add(time.Hour).Truncate(time.Second)
	got, err := p.Enqueue(ctx, u, InQueue("bulk"), WithMaxRetry(3), At(at), InRun("nightly"))
	if err != nil {
		t.Fatal(err)
	}
	st, ok, err := store.Scheduler().Update(ctx, got.TaskID)
	if err != nil || !ok || st.Queue != "bulk" {
		t.Fatalf("admission holds %+v (%v, %v); want it for queue bulk", st, ok, err)
	}
	pl, err := DecodePayload(st.Payload)
	if err != nil {
		t.Fatal(err)
	}
	if pl.ID != u.ID || pl.IntegratedAccountID != "acct" || string(pl.Body) != string(u.Body) || pl.Options.ResponseFormat != "raw" ||
		pl.IdempotencyKey != "key-x" || pl.MaxRetry != 3 || pl.Run != "nightly" || pl.Version != PayloadVersion || pl.EnqueuedAt.IsZero() {
		t.Errorf("payload = %+v", pl)
	}
	if st.State != "waiting" || !st.NotBefore.Equal(at) {
		t.Errorf("admission state %v, to go at %v; want waiting until %v", st.State, st.NotBefore, at)
	}
}

func TestRunKeyStable(t *testing.T) {
	t.Parallel()
	line := []byte(`{"id":"1","integrated_account_id":"a","body":{}}`)
	if a, b := RunKey("r", 1, line), RunKey("r", 1, append([]byte(nil), line...)); a != b {
		t.Errorf("RunKey is not deterministic: %s then %s", a, b)
	}
	for _, other := range []string{RunKey("r2", 1, line), RunKey("r", 2, line), RunKey("r", 1, append(line, ' '))} {
		if other == RunKey("r", 1, line) {
			t.Error("RunKey ignores the run name, line number or content")
		}
	}
	if err := ValidateKey(RunKey("r", 1, line)); err != nil {
		t.Errorf("RunKey is not a valid key: %v", err)
	}
	if err := ValidateKey(NewKey()); err != nil {
		t.Errorf("NewKey is not a valid key: %v", err)
	}
}

func optionsWithFormat(f string) trutoclient.Options { return trutoclient.Options{ResponseFormat: f} }

func TestEnqueueMany(t *testing.T) {
	t.Parallel()
	p, store, _ := newProducer(t)
	ctx := context.Background()
	var us []Update
	for i := 0; i < 40; i++ {
		us = append(us, Update{ID: fmt.Sprintf("org-%d", i%8), IntegratedAccountID: "acct",
			Body: json.RawMessage(fmt.Sprintf(`{"n":%d}`, i)), IdempotencyKey: fmt.Sprintf("many-%d", i)})
	}
	us = append(us, us[0])                                                                     // a duplicate
	us = append(us, Update{ID: "x", IntegratedAccountID: "acct", Body: json.RawMessage(`[]`)}) // invalid
	res, errs := p.EnqueueMany(ctx, us, WithMaxRetry(2))
	for i := 0; i < 40; i++ {
		if errs[i] != nil || res[i].TaskID != TaskID("acct", us[i].IdempotencyKey) {
			t.Fatalf("update %d: %+v, %v", i, res[i], errs[i])
		}
	}
	if !errors.Is(errs[40], ErrDuplicate) || res[40].TaskID != res[0].TaskID {
		t.Errorf("duplicate: %+v, %v", res[40], errs[40])
	}
	var ve *ValidationError
	if !errors.As(errs[41], &ve) {
		t.Errorf("invalid: %v, want a ValidationError", errs[41])
	}
	// Each organization's updates took their places in slice order.
	last := map[string]int64{}
	for i := 0; i < 40; i++ {
		st, ok, err := store.Scheduler().Update(ctx, res[i].TaskID)
		if err != nil || !ok {
			t.Fatalf("update %d not in admission: %v", i, err)
		}
		pl, _ := DecodePayload(st.Payload)
		if st.Seq <= last[pl.ID] || pl.MaxRetry != 2 {
			t.Errorf("update %d of %s: seq %d after %d, max_retry %d", i, pl.ID, st.Seq, last[pl.ID], pl.MaxRetry)
		}
		last[pl.ID] = st.Seq
	}
}
