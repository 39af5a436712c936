package admin

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/orgsync/orgsync/internal/admin/admintest"
	"github.com/orgsync/orgsync/tasks"
	"github.com/orgsync/orgsync/trutoclient"
	"github.com/orgsync/orgsync/trutoclient/trutotest"
)

// runName has a slash and spaces: it must travel path-escaped.
const runName = "crm/2026 nov"

// runner puts updates through the real producer, admission and handler
// against the fake Truto, one admission pass at a time.
type runner struct {
	t        *testing.T
	e        *env
	producer *tasks.Producer
	handler  *tasks.Handler
	// held are the admitted updates not run yet, by organization: each
	// runs the update when called.
	held map[string]func() error
}

func newRunner(t *testing.T, e *env, badOrgs ...string) *runner {
	t.Helper()
	const token = "truto-token-for-runs"
	status := map[string]int{}
	for _, o := range badOrgs {
		status[o] = 422
	}
	fake := trutotest.NewServer(token, trutotest.WithFaults(trutotest.Faults{OrgStatus: status}))
	t.Cleanup(fake.Close)
	client, err := trutoclient.New(token, trutoclient.WithBaseURL(fake.URL))
	if err != nil {
		t.Fatal(err)
	}
	return &runner{t: t, e: e, producer: tasks.NewProducer(e.store), handler: tasks.NewHandler(client, e.store, tasks.Policy{}),
		held: map[string]func() error{}}
}

// enqueue adds update org at line of run.
func (r *runner) enqueue(run string, line int64, org string) {
	r.t.Helper()
	u := tasks.Update{ID: org, IntegratedAccountID: "acct-runs", IdempotencyKey: "key-" + org, Body: json.RawMessage(`{"name":"` + org + `"}`)}
	if _, err := r.producer.Enqueue(context.Background(), u, tasks.InRun(run), tasks.AtLine(line)); err != nil {
		r.t.Fatal(err)
	}
}

// process admits what can go and runs it, except the organizations in hold,
// whose tickets are kept for later (they stay admitted: pending).
func (r *runner) process(hold ...string) {
	r.t.Helper()
	ctx := context.Background()
	tickets, _, err := r.e.store.Scheduler().Admit(ctx, "admin-test")
	if err != nil {
		r.t.Fatal(err)
	}
	for _, tk := range tickets {
		p, err := tasks.DecodePayload(tk.Payload)
		if err != nil {
			r.t.Fatal(err)
		}
		task := tasks.TicketTask(tk)
		run := func() error { return r.handler.ProcessTask(ctx, task) }
		if slices.Contains(hold, p.ID) {
			r.held[p.ID] = run
			continue
		}
		_ = run() // a 422 ends dead, with an error for asynq
	}
}

// ndjson splits an NDJSON answer into its lines, each decoded into a map.
func ndjson(t *testing.T, body string) []map[string]any {
	t.Helper()
	var out []map[string]any
	sc := bufio.NewScanner(strings.NewReader(body))
	sc.Buffer(nil, 4<<20)
	for sc.Scan() {
		var m map[string]any
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			t.Fatalf("line %q: %v", sc.Text(), err)
		}
		out = append(out, m)
	}
	return out
}

// flushCounter records how many lines the body held at each flush.
type flushCounter struct {
	*httptest.ResponseRecorder
	linesAtFlush []int
}

func (f *flushCounter) Flush() {
	f.linesAtFlush = append(f.linesAtFlush, strings.Count(f.Body.String(), "\n"))
	f.ResponseRecorder.Flush()
}

func TestAdminRuns(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	r := newRunner(t, e, "org-r2", "org-r5")
	esc := "/api/runs/" + url.PathEscape(runName)
	if esc != "/api/runs/crm%2F2026%20nov" {
		t.Fatalf("escaped path %s", esc)
	}
	for i := 1; i <= 6; i++ {
		r.enqueue(runName, int64(i), fmt.Sprintf("org-r%d", i))
	}
	r.enqueue("other", 0, "org-x1")
	r.process("org-r6", "org-x1")
	if err := e.store.Runs().Seal(context.Background(), runName); err != nil {
		t.Fatal(err)
	}

	type detail struct {
		tasks.RunStatus
		DeadByStatus map[string]int `json:"dead_by_status"`
		DeadByClass  map[string]int `json:"dead_by_class"`
	}
	getRun := func(path string) detail {
		t.Helper()
		code, body := e.get(t, path)
		if code != 200 {
			t.Fatalf("GET %s: %d %s", path, code, body)
		}
		var d detail
		if err := json.Unmarshal([]byte(body), &d); err != nil {
			t.Fatalf("GET %s: %v\n%s", path, err, body)
		}
		if !strings.Contains(body, `"dead_by_status":{`) || !strings.Contains(body, `"dead_by_class":{`) {
			t.Errorf("GET %s: dead letters by status and class missing: %s", path, body)
		}
		return d
	}

	t.Run("one run", func(t *testing.T) {
		d := getRun(esc)
		if d.Run != runName || d.Total != 6 || d.Completed != 3 || d.Dead != 2 || d.Waiting != 1 || !d.Sealed || d.Done {
			t.Errorf("run = %+v; want %q: 6 lines, 3 completed, 2 dead, 1 waiting, sealed, not done", d.RunStatus, runName)
		}
		if diff := cmp.Diff(map[string]int{"422": 2}, d.DeadByStatus); diff != "" {
			t.Errorf("dead by status (-want +got):\n%s", diff)
		}
		if diff := cmp.Diff(map[string]int{"permanent": 2}, d.DeadByClass); diff != "" {
			t.Errorf("dead by class (-want +got):\n%s", diff)
		}
		// A run without dead letters still says so.
		if o := getRun("/api/runs/other"); o.Total != 1 || o.Sealed || len(o.DeadByStatus) != 0 {
			t.Errorf("run other = %+v", o)
		}
	})

	t.Run("unknown and malformed", func(t *testing.T) {
		for _, tt := range []struct {
			path, want string
			code       int
		}{
			{"/api/runs/no-such-run", "no run named", 404},
			{"/api/runs/no-such-run/results", "no run named", 404},
			{"/api/runs/crm", "no run named", 404},
			{"/api/runs/crm/2026%20nov", "%2F", 404},
			{"/api/runs/", "say which run", 404},
			{esc + "/results?state=bogus", "state=", 400},
			{esc + "/results?status=42", "status=", 400},
			{esc + "/results?limit=0", "limit=", 400},
			{fmt.Sprintf("%s/results?limit=%d", esc, MaxResultsLimit+1), "limit=", 400},
			{esc + "/results?line=1", "unknown parameter", 400},
		} {
			code, body := e.get(t, tt.path)
			var msg struct{ Error string }
			if err := json.Unmarshal([]byte(body), &msg); code != tt.code || err != nil || !strings.Contains(msg.Error, tt.want) {
				t.Errorf("GET %s: %d %s; want %d with a JSON error containing %q", tt.path, code, body, tt.code, tt.want)
			}
		}
		for _, path := range []string{"/api/runs", esc, esc + "/results"} {
			if code, _ := get(t, e.handler, path); code != 401 {
				t.Errorf("GET %s without the token: %d, want 401", path, code)
			}
		}
	})

	t.Run("results", func(t *testing.T) {
		code, body := e.get(t, esc+"/results")
		if code != 200 {
			t.Fatalf("results: %d %s", code, body)
		}
		var got []string
		for _, l := range ndjson(t, body) {
			got = append(got, fmt.Sprintf("%v %v %v", l["line"], l["state"], l["status_code"]))
		}
		want := []string{"1 completed 200", "2 dead 422", "3 completed 200", "4 completed 200", "5 dead 422", "6 pending <nil>"}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("results (-want +got):\n%s\n%s", diff, body)
		}
		lines := ndjson(t, body)
		if resp, _ := lines[0]["response"].(map[string]any); resp["name"] != "org-r1" {
			t.Errorf("line 1 response = %v, want the fake's answer for org-r1", lines[0]["response"])
		}
		if errv, _ := lines[1]["error"].(map[string]any); errv["class"] != "permanent" || errv["body"] == nil {
			t.Errorf("line 2 error = %v, want permanent with Truto's body", lines[1]["error"])
		}
		for q, want := range map[string][]float64{
			"?state=dead":         {2, 5},
			"?state=completed":    {1, 3, 4},
			"?status=422&limit=1": {2},
			"?limit=2":            {1, 2},
			"?state=purged":       nil,
			"?state=pending":      {6},
		} {
			code, body := e.get(t, esc+"/results"+q)
			var got []float64
			for _, l := range ndjson(t, body) {
				got = append(got, l["line"].(float64))
			}
			if code != 200 || !cmp.Equal(want, got) {
				t.Errorf("results%s: %d, lines %v; want %v\n%s", q, code, got, want, body)
			}
		}
	})

	t.Run("results stream line by line", func(t *testing.T) {
		req := httptest.NewRequest(http.MethodGet, "http://127.0.0.1:9464"+esc+"/results", nil)
		req.Header.Set("Authorization", "Bearer "+adminToken)
		rec := &flushCounter{ResponseRecorder: httptest.NewRecorder()}
		e.handler.ServeHTTP(rec, req)
		if rec.Code != 200 || rec.Header().Get("Content-Type") != "application/x-ndjson" {
			t.Fatalf("results: %d %s %s", rec.Code, rec.Header().Get("Content-Type"), rec.Body)
		}
		// Each line goes out as it is read, not the run gathered first.
		if diff := cmp.Diff([]int{1, 2, 3, 4, 5, 6}, rec.linesAtFlush); diff != "" {
			t.Errorf("lines in the body at each flush (-want +got):\n%s", diff)
		}
	})

	t.Run("default limit", func(t *testing.T) {
		for i := 1; i <= DefaultResultsLimit+20; i++ {
			r.enqueue("big", int64(i), fmt.Sprintf("org-big-%03d", i))
		}
		code, body := e.get(t, "/api/runs/big/results")
		lines := ndjson(t, body)
		if code != 200 || len(lines) != DefaultResultsLimit || lines[len(lines)-1]["line"] != float64(DefaultResultsLimit) {
			t.Errorf("results without a limit: %d, %d lines; want the first %d", code, len(lines), DefaultResultsLimit)
		}
		code, body = e.get(t, fmt.Sprintf("/api/runs/big/results?limit=%d", MaxResultsLimit))
		if n := len(ndjson(t, body)); code != 200 || n != DefaultResultsLimit+20 {
			t.Errorf("results with limit=%d: %d, %d lines; want all %d", MaxResultsLimit, code, n, DefaultResultsLimit+20)
		}
	})

	t.Run("list and gauges", func(t *testing.T) {
		if err := r.held["org-r6"](); err != nil {
			t.Fatal(err)
		}
		code, body := e.get(t, "/api/runs")
		var runs []tasks.RunStatus
		if err := json.Unmarshal([]byte(body), &runs); code != 200 || err != nil {
			t.Fatalf("runs: %d %v %s", code, err, body)
		}
		got := map[string]string{}
		for _, rs := range runs {
			got[rs.Run] = fmt.Sprintf("total %d done %v", rs.Total, rs.Done)
		}
		want := map[string]string{runName: "total 6 done true", "other": "total 1 done false",
			"big": fmt.Sprintf("total %d done false", DefaultResultsLimit+20)}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("runs (-want +got):\n%s", diff)
		}
		series := admintest.Series(scrape(t, e.handler, adminToken), "orgsync_")
		// Six updates ended (four completed, two dead), then the run was done.
		wantG := map[string]float64{"orgsync_runs{state=done}": 1, "orgsync_runs{state=open}": 2, "orgsync_outcome_events{}": 7}
		for k, v := range wantG {
			if g, ok := series[k]; !ok || g != v {
				t.Errorf("%s = %v (present %v), want %v", k, g, ok, v)
			}
		}
		for k := range series {
			if strings.Contains(k, "crm") || strings.Contains(k, "big") || strings.Contains(k, "other") {
				t.Errorf("series %s carries a run's name", k)
			}
		}
	})
}

func TestAdminRunsEmpty(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	if code, body := e.get(t, "/api/runs"); code != 200 || body != "[]\n" {
		t.Errorf("no runs: %d %q, want 200 []", code, body)
	}
	series := admintest.Series(scrape(t, e.handler, adminToken), "orgsync_")
	for _, k := range []string{"orgsync_runs{state=done}", "orgsync_runs{state=open}", "orgsync_outcome_events{}"} {
		if g, ok := series[k]; !ok || g != 0 {
			t.Errorf("%s = %v (present %v), want 0", k, g, ok)
		}
	}
}
