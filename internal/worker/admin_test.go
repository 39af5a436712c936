package worker

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/orgsync/orgsync/internal/admin/admintest"
	"github.com/orgsync/orgsync/internal/redistest"
	"github.com/orgsync/orgsync/internal/testrig"
	"github.com/orgsync/orgsync/tasks"
	"github.com/orgsync/orgsync/trutoclient/trutotest"
)

const testAdminToken = "adm_integration_91b2f7"

// adminClient GETs admin endpoints and keeps every body it saw, so a test
// can search all of them for secrets at the end.
type adminClient struct {
	t      *testing.T
	base   string
	mu     sync.Mutex
	bodies map[string]string
}

func (c *adminClient) get(path, token string) (int, string) {
	c.t.Helper()
	req, err := http.NewRequest(http.MethodGet, c.base+path, nil)
	if err != nil {
		c.t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		c.t.Fatalf("GET %s: %v", path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		c.t.Fatalf("GET %s: read: %v", path, err)
	}
	c.mu.Lock()
	c.bodies[fmt.Sprintf("GET %s (token %v) -> %d", path, token != "", resp.StatusCode)] = string(b)
	c.mu.Unlock()
	return resp.StatusCode, string(b)
}

// metrics scrapes /metrics and flattens the orgsync_ series into
// "name{k=v,...}" -> value (a histogram gives its _count).
func (c *adminClient) metrics() map[string]float64 {
	c.t.Helper()
	code, body := c.get("/metrics", testAdminToken)
	if code != 200 {
		c.t.Fatalf("GET /metrics: %d %s", code, body)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := p.TextToMetricFamilies(strings.NewReader(body))
	if err != nil {
		c.t.Fatalf("parse /metrics: %v", err)
	}
	return admintest.Series(mfs, "orgsync_")
}

// only keeps the series whose name starts with one of prefixes.
func only(all map[string]float64, prefixes ...string) map[string]float64 {
	out := map[string]float64{}
	for k, v := range all {
		for _, p := range prefixes {
			if strings.HasPrefix(k, p) {
				out[k] = v
			}
		}
	}
	return out
}

// TestAdminEndpointAfterKnownRun runs 50 updates that succeed and 5 whose
// organization answers 422, then checks /metrics against those exact counts,
// the queue UI, the JSON API, the bearer token, and that no body shows a secret.
func TestAdminEndpointAfterKnownRun(t *testing.T) {
	t.Parallel()
	const good, bad = 50, 5
	badOrgs := map[string]int{}
	for i := good; i < good+bad; i++ {
		badOrgs[fmt.Sprintf("org-%06d", i)] = 422
	}
	p := startPipeline(t, trutotest.Faults{OrgStatus: badOrgs}, func(c *Config) { c.AdminToken = NewToken(testAdminToken) })
	keys := p.enqueue(good+bad, func(i int) string { return fmt.Sprintf("acct-%d", i%5) })
	testrig.WaitFor(t, "50 completed and 5 dead", time.Minute, func() (bool, string) {
		st := p.states(keys)
		return st[tasks.StatusCompleted] == good && st[tasks.StatusDead] == bad, fmt.Sprint(st)
	})
	c := &adminClient{t: t, base: p.worker.AdminURL(), bodies: map[string]string{}}

	// asynq marks a task done after the handler returns: wait for its books
	// too. It keeps no completed task (the ledger holds the update and its
	// result); the dead ones stay in its archive for the queue UI.
	var got map[string]float64
	testrig.WaitFor(t, "asynq's queue counts settle", 30*time.Second, func() (bool, string) {
		got = c.metrics()
		return got["orgsync_queue_tasks{queue=orgsync,state=active}"] == 0 &&
			got["orgsync_queue_tasks{queue=orgsync,state=archived}"] == bad, fmt.Sprint(only(got, "orgsync_queue_tasks"))
	})
	got = c.metrics()
	want := map[string]float64{
		"orgsync_updates_total{class=success,outcome=completed}": good,
		"orgsync_updates_total{class=permanent,outcome=dead}":    bad,
		"orgsync_attempts_total{status=200}":                     good,
		"orgsync_attempts_total{status=422}":                     bad,
		"orgsync_upstream_latency_seconds{}_count":               good + bad,
		"orgsync_enqueue_to_completion_seconds{}_count":          good,
		"orgsync_dead_letters{}":                                 bad,
		"orgsync_circuit_open{}":                                 0,
		"orgsync_account_holds{kind=parked}":                     0,
		"orgsync_account_holds{kind=rate_limited}":               0,
		"orgsync_queue_tasks{queue=orgsync,state=pending}":       0,
		"orgsync_queue_tasks{queue=orgsync,state=active}":        0,
		"orgsync_queue_tasks{queue=orgsync,state=scheduled}":     0,
		"orgsync_queue_tasks{queue=orgsync,state=retry}":         0,
		"orgsync_queue_tasks{queue=orgsync,state=archived}":      bad,
		"orgsync_queue_tasks{queue=orgsync,state=completed}":     0,
		"orgsync_queue_tasks{queue=orgsync,state=aggregating}":   0,
		"orgsync_queue_paused{queue=orgsync}":                    0,
		// One outcome event per update ended; no runs.
		"orgsync_outcome_events{}": good + bad,
		"orgsync_runs{state=open}": 0,
		"orgsync_runs{state=done}": 0,
		// Admission drained, in the one shard the worker recorded.
		"orgsync_admission{what=scheduled_accounts}": 0,
		"orgsync_admission{what=admitted}":           0,
		"orgsync_admission{what=running}":            0,
		"orgsync_admission{what=parked_accounts}":    0,
		"orgsync_admission{what=all_parked}":         0,
		"orgsync_admission{what=shards}":             1,
	}
	checked := only(got, "orgsync_updates_total", "orgsync_attempts_total", "orgsync_waits_total",
		"orgsync_upstream_latency_seconds", "orgsync_enqueue_to_completion_seconds", "orgsync_dead_letters",
		"orgsync_circuit_open", "orgsync_account_holds", "orgsync_queue_tasks", "orgsync_queue_paused",
		"orgsync_outcome_events", "orgsync_runs", "orgsync_admission")
	if diff := cmp.Diff(want, checked); diff != "" {
		t.Errorf("metrics after the run (-want +got):\n%s", diff)
	}
	if n := got["orgsync_scrape_errors_total{source=queues}"]; n != 0 {
		t.Errorf("skipped timings or scrape errors: %v", got)
	}
	for k := range got {
		if strings.Contains(k, "acct-") || strings.Contains(k, "org-") || strings.Contains(k, "it-") {
			t.Errorf("series %s carries a per-account, per-organization or per-update label", k)
		}
	}

	t.Run("token", func(t *testing.T) {
		for _, tt := range []struct {
			path  string
			token string
			want  int
		}{
			{"/healthz", "", 200}, {"/readyz", "", 200},
			{"/metrics", "", 401}, {"/ui/", "", 401}, {"/api/stats", "", 401}, {"/api/status/it-000001", "", 401},
			{"/metrics", "wrong", 401}, {"/api/deadletters", testToken, 401},
			{"/metrics", testAdminToken, 200}, {"/api/stats", testAdminToken, 200},
		} {
			if code, body := c.get(tt.path, tt.token); code != tt.want {
				t.Errorf("GET %s (token %q): %d, want %d; %s", tt.path, tt.token, code, tt.want, body)
			}
		}
	})

	t.Run("ui", func(t *testing.T) {
		code, body := c.get("/ui/", testAdminToken)
		if code != 200 || !strings.Contains(strings.ToLower(body), "<html") {
			t.Errorf("GET /ui/: %d, %.200s", code, body)
		}
		code, body = c.get("/ui/api/queues", testAdminToken)
		if code != 200 || !strings.Contains(body, `"orgsync"`) {
			t.Errorf("GET /ui/api/queues: %d %.300s", code, body)
		}
		// Payloads render as indented JSON in the UI, not as one long line
		// (asynq keeps no completed task; the dead ones are in its archive).
		code, body = c.get("/ui/api/queues/orgsync/archived_tasks?page_size=5", testAdminToken)
		if code != 200 || !strings.Contains(body, `\"integrated_account_id\": \"acct-`) {
			t.Errorf("archived tasks in the UI: %d %.500s", code, body)
		}
	})

	t.Run("json api", func(t *testing.T) {
		code, body := c.get("/api/status/"+keys[3], testAdminToken)
		var st tasks.Status
		if err := json.Unmarshal([]byte(body), &st); code != 200 || err != nil {
			t.Fatalf("status: %d %v %s", code, err, body)
		}
		if st.State != tasks.StatusCompleted || st.Result == nil || st.Result.StatusCode != 200 || st.IdempotencyKey != keys[3] {
			t.Errorf("status of %s = %+v", keys[3], st)
		}
		if code, _ := c.get("/api/status/never-enqueued", testAdminToken); code != 404 {
			t.Errorf("status of an unknown key: %d, want 404", code)
		}
		code, body = c.get("/api/deadletters?status=422&limit=10", testAdminToken)
		if code != 200 {
			t.Fatalf("deadletters: %d %s", code, body)
		}
		var orgs []string
		for _, line := range strings.Split(strings.TrimSpace(body), "\n") {
			var d tasks.DeadLetter
			if err := json.Unmarshal([]byte(line), &d); err != nil {
				t.Fatalf("line %q: %v", line, err)
			}
			orgs = append(orgs, d.Update.ID)
		}
		sort.Strings(orgs)
		if diff := cmp.Diff([]string{"org-000050", "org-000051", "org-000052", "org-000053", "org-000054"}, orgs); diff != "" {
			t.Errorf("dead letters (-want +got):\n%s", diff)
		}
		code, body = c.get("/api/stats", testAdminToken)
		var stats tasks.Stats
		if err := json.Unmarshal([]byte(body), &stats); code != 200 || err != nil || stats.DeadLetters != bad || stats.DeadByStatus["422"] != bad {
			t.Errorf("stats: %d %v %s", code, err, body)
		}
		if code, body := c.get("/api/accounts", testAdminToken); code != 200 || body != "{\"holds\":[]}\n" {
			t.Errorf("accounts: %d %s", code, body)
		}
		if code, body := c.get("/api/circuit", testAdminToken); code != 200 || !strings.Contains(body, `"open":false`) {
			t.Errorf("circuit: %d %s", code, body)
		}
	})

	for what, body := range c.bodies {
		for _, secret := range []string{testToken, testAdminToken} {
			if strings.Contains(body, secret) {
				t.Errorf("%s: the body shows a secret token", what)
			}
		}
	}
}

// TestAdminRunWithOutcomeEventsOff: a worker started with events off
// (--events-max-len 0) applies a run without writing an outcome event, and its
// /metrics and /api/runs show the run done.
func TestAdminRunWithOutcomeEventsOff(t *testing.T) {
	t.Parallel()
	const n = 5
	p := startPipeline(t, trutotest.Faults{}, func(c *Config) {
		c.AdminToken = NewToken(testAdminToken)
		c.EventsMaxLen = -1 // what LoadConfig makes of --events-max-len 0
	})
	ctx := context.Background()
	const run = "nightly/2026 11 28"
	for i := 1; i <= n; i++ {
		u := tasks.Update{ID: fmt.Sprintf("org-%06d", i), IntegratedAccountID: "acct-0", IdempotencyKey: fmt.Sprintf("it-%06d", i),
			Body: json.RawMessage(`{"name":"x"}`)}
		if _, err := p.producer.Enqueue(ctx, u, tasks.InRun(run), tasks.AtLine(int64(i))); err != nil {
			t.Fatal(err)
		}
	}
	// Sealing can make the run done, and then writes its event through the
	// sealing store's own setting: here off too, as a producer's must be.
	if err := tasks.NewStore(p.rdb, tasks.WithEventsMaxLen(0)).Runs().Seal(ctx, run); err != nil {
		t.Fatal(err)
	}
	// Reading a run that is done and not yet announced announces it (writes
	// its run_done event) through the reader's store: the test reads with
	// events off too, or its own poll could write the event the worker must
	// not (it did, now and then, between the worker's done and announced).
	reader := tasks.NewStore(p.rdb, tasks.WithEventsMaxLen(0))
	testrig.WaitFor(t, "the run done", time.Minute, func() (bool, string) {
		st, err := reader.Runs().Get(ctx, run)
		return err == nil && st.Done, fmt.Sprintf("%+v %v", st, err)
	})
	c := &adminClient{t: t, base: p.worker.AdminURL(), bodies: map[string]string{}}
	got := only(c.metrics(), "orgsync_outcome_events", "orgsync_runs")
	want := map[string]float64{"orgsync_outcome_events{}": 0, "orgsync_runs{state=open}": 0, "orgsync_runs{state=done}": 1}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("metrics (-want +got):\n%s", diff)
	}
	if n, err := p.rdb.XLen(ctx, p.store.Events().Key()).Result(); err != nil || n != 0 {
		t.Errorf("outcome stream holds %d entries (%v), want none with events off", n, err)
	}
	code, body := c.get("/api/runs/"+url.PathEscape(run), testAdminToken)
	var st tasks.RunStatus
	if err := json.Unmarshal([]byte(body), &st); code != 200 || err != nil || st.Completed != n || !st.Done {
		t.Errorf("GET /api/runs/%s: %d %v %s; want done with %d completed", url.PathEscape(run), code, err, body, n)
	}
}

// TestAdminWithoutRedisURL is the demo's case: a Redis client handed in, no
// REDIS_URL. The queue UI is left out with a log line; the rest serves, and the
// log never shows the admin token.
func TestAdminWithoutRedisURL(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	fake := trutotest.NewServer(testToken)
	t.Cleanup(fake.Close)
	cfg := testConfig("", fake.URL)
	cfg.AdminToken = NewToken(testAdminToken)
	cfg.AdminAllowedHosts = []string{"orgsync.internal"}
	var logs testrig.SyncBuffer
	w, err := New(context.Background(), cfg, WithRedis(srv.Client()), WithLogger(NewLogger(&logs, "debug")))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
		if strings.Contains(logs.String(), testAdminToken) || strings.Contains(logs.String(), testToken) {
			t.Errorf("a token appears in the log")
		}
	}()
	c := &adminClient{t: t, base: w.AdminURL(), bodies: map[string]string{}}
	if code, _ := c.get("/ui/", testAdminToken); code != 404 {
		t.Errorf("GET /ui/ without a REDIS_URL: %d, want 404 (no UI)", code)
	}
	if code, _ := c.get("/ui/", "bad"); code != 401 {
		t.Errorf("GET /ui/ with a bad token: %d, want 401", code)
	}
	if code, body := c.get("/api/stats", testAdminToken); code != 200 {
		t.Errorf("GET /api/stats: %d %s", code, body)
	}
	for host, want := range map[string]int{"evil.example:9464": 421, "orgsync.internal:9464": 200, "localhost": 200} {
		req, err := http.NewRequest(http.MethodGet, c.base+"/api/stats", nil)
		if err != nil {
			t.Fatal(err)
		}
		req.Host = host
		req.Header.Set("Authorization", "Bearer "+testAdminToken)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		_ = resp.Body.Close()
		if resp.StatusCode != want {
			t.Errorf("GET /api/stats with Host %s: %d, want %d", host, resp.StatusCode, want)
		}
	}
	if !strings.Contains(logs.String(), "queue UI (/ui/) left out") {
		t.Errorf("no log line says the UI was left out:\n%s", logs.String())
	}
}

func TestAdminConfig(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	write := func(name, content string) string {
		t.Helper()
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	good := write("good", testAdminToken+"\n")
	empty := write("empty", "\n")
	spaced := write("spaced", "two words-"+testAdminToken)
	tests := []struct {
		name      string
		args      []string
		env       map[string]string
		wantToken string
		wantUI    bool
		wantErr   string
	}{
		{"defaults", nil, nil, "", false, ""},
		{"flag", []string{"--admin-token-file", good, "--admin-ui-writable=true"}, nil, testAdminToken, true, ""},
		{"env", nil, map[string]string{"ORGSYNC_ADMIN_TOKEN_FILE": good, "ORGSYNC_ADMIN_UI_WRITABLE": "1"}, testAdminToken, true, ""},
		{"empty file", []string{"--admin-token-file", empty}, nil, "", false, "is empty"},
		{"spaces", []string{"--admin-token-file", spaced}, nil, "", false, "without spaces"},
		{"missing file", []string{"--admin-token-file", filepath.Join(dir, "nope")}, nil, "", false, "--admin-token-file"},
		{"bad bool", nil, map[string]string{"ORGSYNC_ADMIN_UI_WRITABLE": "yes please"}, "", false, "--admin-ui-writable (ORGSYNC_ADMIN_UI_WRITABLE)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c, ok := loadCase(t, tt.args, tt.env, tt.wantErr, testAdminToken)
			if !ok {
				return
			}
			if c.AdminToken.Value() != tt.wantToken || c.AdminUIWritable != tt.wantUI {
				t.Errorf("token %q ui writable %v, want %q %v", c.AdminToken.Value(), c.AdminUIWritable, tt.wantToken, tt.wantUI)
			}
			if s := fmt.Sprintf("%v %+v %#v", c, c, c); strings.Contains(s, testAdminToken) {
				t.Errorf("the config prints the admin token")
			}
		})
	}
}

// TestAdminWarnsWhenOpenBeyondLoopback reads the startup log of a worker
// whose admin endpoint listens on every interface without a token.
func TestAdminWarnsWhenOpenBeyondLoopback(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	fake := trutotest.NewServer(testToken)
	t.Cleanup(fake.Close)
	tests := []struct {
		name     string
		addr     string
		token    string
		writable bool
		want     []string // the warning's msg and fix, or nil for no warning
	}{
		{"all interfaces, no token", "0.0.0.0:0", "", false, []string{
			"ADMIN ENDPOINT OPEN BEYOND LOOPBACK WITHOUT A TOKEN: anyone who can reach it reads update payloads, results and dead letters",
			"put a bearer token in a file and set --admin-token-file (ORGSYNC_ADMIN_TOKEN_FILE), or listen on loopback with --admin-addr 127.0.0.1:9464 (ORGSYNC_ADMIN_ADDR)",
		}},
		{"all interfaces, writable UI", ":0", "", true, []string{
			"ADMIN ENDPOINT OPEN BEYOND LOOPBACK WITHOUT A TOKEN: anyone who can reach it reads update payloads, results and dead letters, and changes tasks and queues through the writable queue UI",
			"put a bearer token in a file and set --admin-token-file (ORGSYNC_ADMIN_TOKEN_FILE), or listen on loopback with --admin-addr 127.0.0.1:9464 (ORGSYNC_ADMIN_ADDR)",
		}},
		{"all interfaces with a token", "0.0.0.0:0", testAdminToken, false, nil},
		{"loopback without a token", "127.0.0.1:0", "", false, nil},
		{"localhost without a token", "localhost:0", "", false, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			cfg := testConfig(srv.URL(), fake.URL)
			cfg.AdminAddr, cfg.AdminToken, cfg.AdminUIWritable = tt.addr, NewToken(tt.token), tt.writable
			var logs testrig.SyncBuffer
			w, err := New(context.Background(), cfg, WithLogger(NewLogger(&logs, "debug")))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() {
				_ = w.adminLn.Close()
				w.close()
			})
			var got []string
			for _, line := range strings.Split(strings.TrimSpace(logs.String()), "\n") {
				if line == "" {
					continue
				}
				var l struct{ Level, Msg, Fix string }
				if err := json.Unmarshal([]byte(line), &l); err != nil {
					t.Fatalf("log line %q is not JSON: %v", line, err)
				}
				if l.Level == "WARN" && strings.HasPrefix(l.Msg, "ADMIN ENDPOINT") {
					got = append(got, l.Msg, l.Fix)
				}
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("warning (-want +got):\n%s\nlog:\n%s", diff, logs.String())
			}
		})
	}
}

func TestAdminHostAndConnectionSettings(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name      string
		args      []string
		env       map[string]string
		wantHosts []string
		wantConns int
		wantErr   string
	}{
		{"defaults", nil, nil, nil, 128, ""},
		{"flags", []string{"--admin-allowed-hosts", "orgsync.internal, worker:9464", "--admin-max-conns", "16"}, nil,
			[]string{"orgsync.internal", "worker:9464"}, 16, ""},
		{"env", nil, map[string]string{"ORGSYNC_ADMIN_ALLOWED_HOSTS": "*", "ORGSYNC_ADMIN_MAX_CONNS": "1"}, []string{"*"}, 1, ""},
		{"a URL is not a host", []string{"--admin-allowed-hosts", "http://worker:9464"}, nil, nil, 0,
			"--admin-allowed-hosts (ORGSYNC_ADMIN_ALLOWED_HOSTS)"},
		{"no connections", []string{"--admin-max-conns", "0"}, nil, nil, 0, "--admin-max-conns (ORGSYNC_ADMIN_MAX_CONNS)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c, ok := loadCase(t, tt.args, tt.env, tt.wantErr)
			if !ok {
				return
			}
			if diff := cmp.Diff(tt.wantHosts, c.AdminAllowedHosts); diff != "" {
				t.Errorf("allowed hosts (-want +got):\n%s", diff)
			}
			if c.AdminMaxConns != tt.wantConns {
				t.Errorf("max conns %d, want %d", c.AdminMaxConns, tt.wantConns)
			}
		})
	}
}

// loadCase loads a config from args and env, with an API token set, for one
// case of a table: with wantErr it checks the error names it (and shows none
// of secrets) and says the case is over; without, it fails on any error and
// returns the config for the case to check.
func loadCase(t *testing.T, args []string, env map[string]string, wantErr string, secrets ...string) (Config, bool) {
	t.Helper()
	all := map[string]string{"TRUTO_API_TOKEN": "tok"}
	for k, v := range env {
		all[k] = v
	}
	c, err := LoadConfig(args, lookupFrom(all), &bytes.Buffer{})
	if wantErr == "" {
		if err != nil {
			t.Fatal(err)
		}
		return c, true
	}
	if err == nil || !strings.Contains(err.Error(), wantErr) {
		t.Fatalf("error %v, want one containing %q", err, wantErr)
	}
	for _, s := range secrets {
		if strings.Contains(err.Error(), s) {
			t.Errorf("the error shows a secret: %v", err)
		}
	}
	return c, false
}
