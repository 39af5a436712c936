package admin

import (
	"bufio"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/hibiken/asynq"

	"github.com/orgsync/orgsync/internal/admin/admintest"
	"github.com/orgsync/orgsync/internal/circuit"
	"github.com/orgsync/orgsync/internal/redistest"
	"github.com/orgsync/orgsync/tasks"
)

const adminToken = "adm_secret_7c1d9e"

// get serves one GET to h and returns the status and body.
func get(t *testing.T, h http.Handler, path string, header ...string) (int, string) {
	t.Helper()
	req := httptest.NewRequest(http.MethodGet, "http://127.0.0.1:9464"+path, nil)
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	return rec.Code, rec.Body.String()
}

func TestAdminTokenEnforced(t *testing.T) {
	t.Parallel()
	ui := http.HandlerFunc(func(rw http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(rw, "ui") })
	m := NewMetrics(MetricsConfig{})
	opts := Options{Metrics: m, UI: ui, Circuit: fixedCircuit{}, Token: adminToken}
	h := NewHandler(opts)
	open := NewHandler(Options{Metrics: m, UI: ui, Circuit: fixedCircuit{}})
	basic := func(user, pass string) string {
		return "Basic " + base64.StdEncoding.EncodeToString([]byte(user+":"+pass))
	}
	tests := []struct {
		name    string
		handler http.Handler
		path    string
		auth    string
		want    int
	}{
		{"healthz open", h, "/healthz", "", 200},
		{"readyz open", h, "/readyz", "", 200},
		{"metrics without token", h, "/metrics", "", 401},
		{"metrics with token", h, "/metrics", "Bearer " + adminToken, 200},
		{"metrics lower-case scheme", h, "/metrics", "bearer " + adminToken, 200},
		{"metrics wrong token", h, "/metrics", "Bearer " + adminToken + "x", 401},
		{"metrics token prefix", h, "/metrics", "Bearer " + adminToken[:5], 401},
		{"metrics empty bearer", h, "/metrics", "Bearer ", 401},
		{"metrics basic refused off the UI", h, "/metrics", basic("x", adminToken), 401},
		{"api without token", h, "/api/circuit", "", 401},
		{"api with token", h, "/api/circuit", "Bearer " + adminToken, 200},
		{"index without token", h, "/", "", 401},
		{"unknown path without token", h, "/nope", "", 401},
		{"unknown path with token", h, "/nope", "Bearer " + adminToken, 404},
		{"ui without token", h, "/ui/", "", 401},
		{"ui with token", h, "/ui/", "Bearer " + adminToken, 200},
		{"ui basic password", h, "/ui/", basic("ops", adminToken), 200},
		{"ui basic wrong", h, "/ui/", basic("ops", "nope"), 401},
		{"ui basic garbage", h, "/ui/", "Basic !!!", 401},
		{"no token configured", open, "/metrics", "", 200},
		{"no token configured ui", open, "/ui/", "", 200},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			code, body := get(t, tt.handler, tt.path, "Authorization", tt.auth)
			if code != tt.want {
				t.Errorf("GET %s: %d, want %d; body %s", tt.path, code, tt.want, body)
			}
			if strings.Contains(body, adminToken) {
				t.Errorf("GET %s: body shows the admin token: %s", tt.path, body)
			}
			if code == 401 {
				var e struct{ Error string }
				if err := json.Unmarshal([]byte(body), &e); err != nil || e.Error == "" {
					t.Errorf("401 body is not a JSON error: %q", body)
				}
			}
		})
	}
}

func TestAdminUIRefusesCrossOriginWrites(t *testing.T) {
	t.Parallel()
	ui := http.HandlerFunc(func(rw http.ResponseWriter, _ *http.Request) { rw.WriteHeader(http.StatusNoContent) })
	h := NewHandler(Options{UI: ui})
	tests := []struct {
		name, method string
		header       map[string]string
		want         int
	}{
		{"get from anywhere", http.MethodGet, map[string]string{"Sec-Fetch-Site": "cross-site"}, 204},
		{"post same origin", http.MethodPost, map[string]string{"Sec-Fetch-Site": "same-origin"}, 204},
		{"post cross site", http.MethodPost, map[string]string{"Sec-Fetch-Site": "cross-site"}, 403},
		{"delete same site", http.MethodDelete, map[string]string{"Sec-Fetch-Site": "same-site"}, 403},
		{"post foreign origin", http.MethodPost, map[string]string{"Origin": "http://evil.example"}, 403},
		{"post own origin", http.MethodPost, map[string]string{"Origin": "http://127.0.0.1:9464"}, 204},
		{"post from a script", http.MethodPost, nil, 204},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			req := httptest.NewRequest(tt.method, "http://127.0.0.1:9464/ui/api/queues/q:pause", nil)
			for k, v := range tt.header {
				req.Header.Set(k, v)
			}
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, req)
			if rec.Code != tt.want {
				t.Errorf("%s: %d, want %d", tt.name, rec.Code, tt.want)
			}
		})
	}
}

func TestAdminParseFilter(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	tests := []struct {
		query   string
		want    tasks.Filter
		wantErr string
	}{
		{"", tasks.Filter{Limit: 100}, ""},
		{"account=A&org=O&status=422&class=permanent&limit=10000",
			tasks.Filter{Account: "A", OrgID: "O", StatusCode: 422, Class: "permanent", Limit: 10000}, ""},
		{"since=2h&until=2026-03-01T11:30:00Z",
			tasks.Filter{Since: now.Add(-2 * time.Hour), Until: time.Date(2026, 3, 1, 11, 30, 0, 0, time.UTC), Limit: 100}, ""},
		{"since=7d", tasks.Filter{Since: now.Add(-7 * 24 * time.Hour), Limit: 100}, ""},
		{"limit=0", tasks.Filter{}, "limit"},
		{"limit=10001", tasks.Filter{}, "limit"},
		{"limit=-1", tasks.Filter{}, "limit"},
		{"status=abc", tasks.Filter{}, "status"},
		{"status=42", tasks.Filter{}, "status"},
		{"since=yesterday", tasks.Filter{}, "since"},
		{"since=-2h", tasks.Filter{}, "since"},
		{"until=999999999999d", tasks.Filter{}, "until"},
		{"acount=A", tasks.Filter{}, "unknown parameter"},
	}
	for _, tt := range tests {
		t.Run(tt.query, func(t *testing.T) {
			t.Parallel()
			req := httptest.NewRequest(http.MethodGet, "/api/deadletters?"+tt.query, nil)
			got, err := parseFilter(req.URL.Query(), now)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Errorf("error %v, want one naming %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("filter (-want +got):\n%s", diff)
			}
		})
	}
}

func TestAdminFormatJSON(t *testing.T) {
	t.Parallel()
	long := `{"s":"` + strings.Repeat("é", maxShown) + `"}`
	tests := []struct {
		name, in, want string
	}{
		{"json indented", `{"v":1,"id":"o1"}`, "{\n  \"v\": 1,\n  \"id\": \"o1\"\n}"},
		{"text as is", "not json\n", "not json\n"},
		{"binary", "\x00\x01\xff", "(3 bytes, not text)"},
		{"empty", "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if got := FormatJSON("t", []byte(tt.in)); got != tt.want {
				t.Errorf("FormatJSON(%q) = %q, want %q", tt.in, got, tt.want)
			}
		})
	}
	got := FormatJSON("t", []byte(long))
	if len(got) > maxShown+200 || !strings.Contains(got, "more bytes") || !strings.HasPrefix(got, "{") {
		t.Errorf("a long payload is not cut: %d bytes", len(got))
	}
}

// env is a real Redis with orgsync records in it and the admin handler on top.
type env struct {
	store   *tasks.Store
	handler http.Handler
	metrics *Metrics
	now     time.Time
}

func newEnv(t *testing.T) *env {
	t.Helper()
	srv := redistest.Start(t)
	rdb := srv.Client()
	now := time.Now().UTC().Truncate(time.Millisecond)
	store := tasks.NewStore(rdb, tasks.WithClock(func() time.Time { return now }))
	br := circuit.New(rdb, circuit.Config{})
	ins := asynq.NewInspectorFromRedisClient(rdb)
	m := NewMetrics(MetricsConfig{Store: store, Circuit: br, Inspector: ins, Queues: []string{tasks.DefaultQueue}})
	h := NewHandler(Options{Store: store, Circuit: br, Queues: []string{tasks.DefaultQueue}, Metrics: m,
		Token: adminToken, Now: func() time.Time { return now }})
	return &env{store: store, handler: h, metrics: m, now: now}
}

func (e *env) get(t *testing.T, path string) (int, string) {
	t.Helper()
	return get(t, e.handler, path, "Authorization", "Bearer "+adminToken)
}

// deadLetters reads an NDJSON answer.
func deadLetters(t *testing.T, body string) []tasks.DeadLetter {
	t.Helper()
	var out []tasks.DeadLetter
	sc := bufio.NewScanner(strings.NewReader(body))
	sc.Buffer(nil, 4<<20)
	for sc.Scan() {
		var d tasks.DeadLetter
		if err := json.Unmarshal(sc.Bytes(), &d); err != nil {
			t.Fatalf("line %q: %v", sc.Text(), err)
		}
		out = append(out, d)
	}
	return out
}

func TestAdminJSONAPIAndGauges(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ctx := context.Background()
	var want []tasks.DeadLetter
	for i := range 12 {
		status, class, account := 422, tasks.Class("permanent"), "acct-a"
		if i%3 == 0 {
			status, class, account = 503, tasks.ClassExhausted, "acct-b"
		}
		key := fmt.Sprintf("key-%02d", i)
		d := tasks.DeadLetter{TaskID: tasks.TaskID(account, key), Queue: tasks.DefaultQueue, IdempotencyKey: key,
			Update: tasks.Update{ID: fmt.Sprintf("org-%d", i%4), IntegratedAccountID: account, Body: json.RawMessage(`{"n":1}`), IdempotencyKey: key},
			Class:  class, StatusCode: status, Reason: "because", Attempts: 1, DeadAt: e.now.Add(time.Duration(i-12) * time.Hour)}
		if err := e.store.DeadLetters().Put(ctx, d); err != nil {
			t.Fatal(err)
		}
		want = append(want, d)
	}
	if err := e.store.Accounts().Park(ctx, "acct-p", 401, "re-authorize"); err != nil {
		t.Fatal(err)
	}
	if err := e.store.Accounts().Pause(ctx, "acct-r", e.now.Add(time.Hour), 429, "slow down"); err != nil {
		t.Fatal(err)
	}
	pick := func(f func(tasks.DeadLetter) bool, limit int) []tasks.DeadLetter {
		var out []tasks.DeadLetter
		for _, d := range want {
			if f(d) && (limit == 0 || len(out) < limit) {
				out = append(out, d)
			}
		}
		return out
	}

	t.Run("deadletters", func(t *testing.T) {
		t.Parallel()
		tests := []struct {
			query string
			want  []tasks.DeadLetter
		}{
			{"", want},
			{"?limit=2", want[:2]},
			{"?status=422", pick(func(d tasks.DeadLetter) bool { return d.StatusCode == 422 }, 0)},
			{"?class=exhausted&account=acct-b", pick(func(d tasks.DeadLetter) bool { return d.Class == tasks.ClassExhausted }, 0)},
			{"?org=org-1", pick(func(d tasks.DeadLetter) bool { return d.Update.ID == "org-1" }, 0)},
			{"?since=3h", pick(func(d tasks.DeadLetter) bool { return !d.DeadAt.Before(e.now.Add(-3 * time.Hour)) }, 0)},
			{"?until=" + e.now.Add(-10*time.Hour).Format(time.RFC3339), want[:2]},
			{"?account=nobody", nil},
		}
		for _, tt := range tests {
			code, body := e.get(t, "/api/deadletters"+tt.query)
			if code != 200 {
				t.Fatalf("%s: %d %s", tt.query, code, body)
			}
			if diff := cmp.Diff(tt.want, deadLetters(t, body)); diff != "" {
				t.Errorf("/api/deadletters%s (-want +got):\n%s", tt.query, diff)
			}
		}
		if code, body := e.get(t, "/api/deadletters?limit=10001"); code != 400 || !strings.Contains(body, "limit") {
			t.Errorf("limit over the maximum: %d %s, want 400 naming limit", code, body)
		}
	})

	t.Run("status", func(t *testing.T) {
		t.Parallel()
		for _, ref := range []string{"key-04", want[4].TaskID} {
			code, body := e.get(t, "/api/status/"+ref)
			if code != 200 {
				t.Fatalf("status %s: %d %s", ref, code, body)
			}
			var st tasks.Status
			if err := json.Unmarshal([]byte(body), &st); err != nil {
				t.Fatal(err)
			}
			if st.State != tasks.StatusDead || st.TaskID != want[4].TaskID || st.IdempotencyKey != "key-04" || st.DeadLetter == nil {
				t.Errorf("status %s = %+v, want the dead letter of key-04", ref, st)
			}
		}
		code, body := e.get(t, "/api/status/no-such-key")
		if code != 404 || !strings.Contains(body, `"error"`) {
			t.Errorf("unknown ref: %d %s, want a 404 JSON error", code, body)
		}
	})

	t.Run("stats accounts circuit", func(t *testing.T) {
		t.Parallel()
		code, body := e.get(t, "/api/stats")
		var st tasks.Stats
		if err := json.Unmarshal([]byte(body), &st); code != 200 || err != nil {
			t.Fatalf("stats: %d %v %s", code, err, body)
		}
		if diff := cmp.Diff(map[string]int{"422": 8, "503": 4}, st.DeadByStatus); st.DeadLetters != 12 || diff != "" {
			t.Errorf("stats: %d dead letters, by status (-want +got):\n%s", st.DeadLetters, diff)
		}
		code, body = e.get(t, "/api/accounts")
		var acc struct{ Holds []tasks.Hold }
		if err := json.Unmarshal([]byte(body), &acc); code != 200 || err != nil {
			t.Fatalf("accounts: %d %v %s", code, err, body)
		}
		var got []string
		for _, h := range acc.Holds {
			got = append(got, h.Account+"/"+h.Kind)
		}
		if diff := cmp.Diff([]string{"acct-p/parked", "acct-r/rate_limited"}, got); diff != "" {
			t.Errorf("accounts (-want +got):\n%s", diff)
		}
		code, body = e.get(t, "/api/circuit")
		if code != 200 || !strings.Contains(body, `"open":false`) {
			t.Errorf("circuit: %d %s", code, body)
		}
	})

	t.Run("gauges", func(t *testing.T) {
		t.Parallel()
		got := admintest.Series(scrape(t, e.handler, adminToken), "orgsync_")
		wantG := map[string]float64{
			"orgsync_dead_letters{}":                   12,
			"orgsync_account_holds{kind=parked}":       1,
			"orgsync_account_holds{kind=rate_limited}": 1,
			"orgsync_circuit_open{}":                   0,
			// Nothing was enqueued: the queue does not exist in asynq yet, and reads as empty.
			"orgsync_queue_tasks{queue=orgsync,state=pending}": 0,
		}
		for k, v := range wantG {
			if g, ok := got[k]; !ok || g != v {
				t.Errorf("%s = %v (present %v), want %v", k, g, ok, v)
			}
		}
		for k := range got {
			if strings.Contains(k, "acct-") || strings.Contains(k, "org-") {
				t.Errorf("series %s has a per-account or per-organization label", k)
			}
		}
	})
}
