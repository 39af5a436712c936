package main

import (
	"bytes"
	"context"
	"encoding/json"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/orgsync/orgsync/internal/admission"
	"github.com/orgsync/orgsync/internal/redistest"
	"github.com/orgsync/orgsync/tasks"
)

// result is one run of the CLI.
type result struct {
	code           int
	stdout, stderr string
}

// cli runs the CLI against srv (nil: no --redis-url) with stdin, and checks
// that stdout holds only JSON, whatever the outcome.
func cli(t *testing.T, srv *redistest.Server, stdin string, args ...string) result {
	t.Helper()
	if srv != nil {
		args = append([]string{"--redis-url", srv.URL()}, args...)
	}
	return cliEnv(t, func(string) string { return "" }, stdin, args...)
}

// cliEnv is cli with an environment.
func cliEnv(t *testing.T, env func(string) string, stdin string, args ...string) result {
	t.Helper()
	var out, errb bytes.Buffer
	code := run(context.Background(), args, strings.NewReader(stdin), &out, &errb, env)
	r := result{code: code, stdout: out.String(), stderr: errb.String()}
	checkJSONLines(t, r)
	return r
}

// checkJSONLines fails unless stdout is one or more lines of JSON objects.
func checkJSONLines(t *testing.T, r result) {
	t.Helper()
	if r.stdout == "" {
		t.Errorf("stdout is empty (exit %d, stderr %q); want JSON", r.code, r.stderr)
		return
	}
	for i, line := range strings.Split(strings.TrimSuffix(r.stdout, "\n"), "\n") {
		if !json.Valid([]byte(line)) || !strings.HasPrefix(line, "{") {
			t.Errorf("stdout line %d is not a JSON object: %q", i+1, line)
		}
	}
}

// decode parses stdout's one JSON object into v.
func decode(t *testing.T, r result, v any) {
	t.Helper()
	dec := json.NewDecoder(strings.NewReader(r.stdout))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		t.Fatalf("decode stdout %q: %v", r.stdout, err)
	}
	if dec.More() {
		t.Fatalf("stdout has more than one object: %q", r.stdout)
	}
}

// decodeLines parses stdout's NDJSON into one T per line.
func decodeLines[T any](t *testing.T, r result) []T {
	t.Helper()
	var out []T
	for line := range strings.Lines(r.stdout) {
		var v T
		if err := json.Unmarshal([]byte(line), &v); err != nil {
			t.Fatalf("decode line %q: %v", line, err)
		}
		out = append(out, v)
	}
	return out
}

// fixture is a private Redis with orgsync's store and producer on it.
type fixture struct {
	srv      *redistest.Server
	rdb      *redis.Client
	store    *tasks.Store
	producer *tasks.Producer
	ins      *asynq.Inspector
}

func newFixture(t *testing.T, opts ...redistest.Option) *fixture {
	t.Helper()
	srv := redistest.Start(t, opts...)
	rdb := srv.Client()
	store := tasks.NewStore(rdb)
	p := tasks.NewProducer(store)
	t.Cleanup(func() { _ = p.Close() })
	return &fixture{srv: srv, rdb: rdb, store: store, producer: p, ins: asynq.NewInspectorFromRedisClient(rdb)}
}

// inAdmission returns those of ids that admission holds (waiting, admitted
// or running), in the order given. The producer puts updates there, not in
// asynq: asynq only ever sees an update once a worker's admitter admits it.
func (f *fixture) inAdmission(t *testing.T, ids ...string) []string {
	t.Helper()
	out := []string{}
	for _, id := range ids {
		if _, ok, err := f.store.Scheduler().Update(context.Background(), id); err != nil {
			t.Fatalf("admission state of %s: %v", id, err)
		} else if ok {
			out = append(out, id)
		}
	}
	return out
}

// held counts the updates admission holds for these accounts: with
// inAdmission, it proves admission holds exactly a given set of updates.
func (f *fixture) held(t *testing.T, accounts ...string) int64 {
	t.Helper()
	var n int64
	for _, a := range accounts {
		st, err := f.store.Scheduler().Account(context.Background(), a)
		if err != nil {
			t.Fatalf("admission state of account %s: %v", a, err)
		}
		n += st.Waiting
	}
	return n
}

// queueSize counts the tasks of asynq queue q in every state (0 when it
// never existed): enqueueing alone must leave asynq untouched.
func (f *fixture) queueSize(t *testing.T, q string) int {
	t.Helper()
	queues, err := f.ins.Queues()
	if err != nil {
		t.Fatalf("list queues: %v", err)
	}
	if !slices.Contains(queues, q) {
		return 0 // nothing was ever enqueued to it
	}
	qi, err := f.ins.GetQueueInfo(q)
	if err != nil {
		t.Fatalf("queue info %s: %v", q, err)
	}
	return qi.Size
}

// payload reads the payload and admission state of update id, failing the
// test when admission does not hold it.
func (f *fixture) payload(t *testing.T, id string) (tasks.Payload, admission.UpdateState) {
	t.Helper()
	st, ok, err := f.store.Scheduler().Update(context.Background(), id)
	if err != nil {
		t.Fatalf("admission state of %s: %v", id, err)
	}
	if !ok {
		t.Fatalf("update %s is not in admission", id)
	}
	p, err := tasks.DecodePayload(st.Payload)
	if err != nil {
		t.Fatalf("decode payload of %s: %v", id, err)
	}
	return p, st
}

// deliver admits what can go now and hands it to asynq as a worker's
// admitter does (the queue then exists in asynq), returning the tickets.
func (f *fixture) deliver(t *testing.T) []admission.Ticket {
	t.Helper()
	ctx := context.Background()
	tickets, _, err := f.store.Scheduler().Admit(ctx, "test-admitter")
	if err != nil {
		t.Fatalf("admit: %v", err)
	}
	client := asynq.NewClientFromRedisClient(f.rdb)
	if _, err := tasks.Deliverer(client, time.Hour)(ctx, tickets); err != nil {
		t.Fatalf("hand admitted updates to asynq: %v", err)
	}
	return tickets
}

// deadLetter builds a dead letter of a valid update with key key.
func deadLetter(key, account, org string, status int, class tasks.Class, deadAt time.Time) tasks.DeadLetter {
	return tasks.DeadLetter{
		TaskID: tasks.TaskID(account, key),
		Queue:  tasks.DefaultQueue,
		Update: tasks.Update{ID: org, IntegratedAccountID: account, Body: json.RawMessage(`{"name":"` + org + `"}`),
			IdempotencyKey: key},
		IdempotencyKey: key,
		Class:          class,
		Reason:         "upstream said no",
		StatusCode:     status,
		Attempts:       1,
		DeadAt:         deadAt.UTC(),
	}
}

// putDeadLetters stores ds.
func (f *fixture) putDeadLetters(t *testing.T, ds ...tasks.DeadLetter) {
	t.Helper()
	for _, d := range ds {
		if err := f.store.DeadLetters().Put(context.Background(), d); err != nil {
			t.Fatalf("put dead letter: %v", err)
		}
	}
}

// deadIDs lists the stored dead letters' task ids, oldest first.
func (f *fixture) deadIDs(t *testing.T) []string {
	t.Helper()
	var ids []string
	err := f.store.DeadLetters().Each(context.Background(), tasks.Filter{}, func(d tasks.DeadLetter) error {
		ids = append(ids, d.TaskID)
		return nil
	})
	if err != nil {
		t.Fatalf("list dead letters: %v", err)
	}
	return ids
}
