package trutotest

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// control calls the control API (no token) and decodes the JSON answer into out.
func control(t *testing.T, f *Fake, method, target, body string, out any) int {
	t.Helper()
	req := httptest.NewRequest(method, target, strings.NewReader(body))
	w := httptest.NewRecorder()
	f.ServeHTTP(w, req)
	if out != nil && w.Code < 300 {
		if err := json.Unmarshal(w.Body.Bytes(), out); err != nil {
			t.Fatalf("%s %s: %v: %s", method, target, err, w.Body)
		}
	}
	return w.Code
}

func TestControlFaults(t *testing.T) {
	t.Parallel()
	f := New(testToken)
	var got Faults
	if st := control(t, f, http.MethodGet, "/_fake/faults", "", &got); st != 200 {
		t.Fatalf("GET faults: %d", st)
	}
	if diff := cmp.Diff(DefaultFaults(), got); diff != "" {
		t.Errorf("GET faults (-want +got):\n%s", diff)
	}

	// PUT replaces; what it leaves out takes the defaults.
	put := `{"latency":"20ms","latency_jitter":1000000,"error_rates":{"500":0.05},"account_status":{"acc-9":401}}`
	if st := control(t, f, http.MethodPut, "/_fake/faults", put, &got); st != 200 {
		t.Fatalf("PUT faults: %d", st)
	}
	want := DefaultFaults()
	want.Latency, want.LatencyJitter = Duration(20*time.Millisecond), Duration(time.Millisecond)
	want.ErrorRates = map[int]float64{500: 0.05}
	want.AccountStatus = map[string]int{"acc-9": 401}
	if diff := cmp.Diff(want, f.Faults()); diff != "" {
		t.Errorf("after PUT (-want +got):\n%s", diff)
	}

	// PATCH changes only the given top-level fields; a given map replaces the old one.
	patchBody := `{"error_rates":{"502":0.1},"account_limit":{"requests":5,"window":"1s"},"ignore_idempotency":true}`
	if st := control(t, f, http.MethodPatch, "/_fake/faults", patchBody, &got); st != 200 {
		t.Fatalf("PATCH faults: %d", st)
	}
	want.ErrorRates = map[int]float64{502: 0.1}
	want.AccountLimit = Limit{5, Duration(time.Second)}
	want.IgnoreIdempotency = true
	if diff := cmp.Diff(want, f.Faults()); diff != "" {
		t.Errorf("after PATCH (-want +got):\n%s", diff)
	}

	for _, bad := range []struct{ method, body string }{
		{http.MethodPut, `{"latncy":"1s"}`},
		{http.MethodPut, `{"error_rates":{"500":1.5}}`},
		{http.MethodPut, `{"error_rates":{"500":0.6,"502":0.6}}`},
		{http.MethodPatch, `{"outage":{"mode":"fire"}}`},
		{http.MethodPatch, `{"latency":"soon"}`},
		{http.MethodPatch, `[]`},
		{http.MethodPatch, `{"account_status":{"a":200}}`},
	} {
		if st := control(t, f, bad.method, "/_fake/faults", bad.body, nil); st != 400 {
			t.Errorf("%s %s: status %d, want 400", bad.method, bad.body, st)
		}
	}
	if diff := cmp.Diff(want, f.Faults()); diff != "" {
		t.Errorf("a refused change changed the faults (-want +got):\n%s", diff)
	}
	if st := control(t, f, http.MethodDelete, "/_fake/faults", "", nil); st != 405 {
		t.Errorf("DELETE faults: %d, want 405", st)
	}
}

func TestControlOutage(t *testing.T) {
	t.Parallel()
	clk := newClock()
	f := New(testToken, WithClock(clk.now))
	var o Outage
	if st := control(t, f, http.MethodPost, "/_fake/outage", `{"mode":"503","duration":"30s"}`, &o); st != 200 {
		t.Fatalf("POST outage: %d", st)
	}
	if diff := cmp.Diff(Outage{Mode: "503", Until: clk.now().Add(30 * time.Second)}, o); diff != "" {
		t.Errorf("outage (-want +got):\n%s", diff)
	}
	wantStatus(t, patch(t, f, orgURL("o", ""), `{}`, ""), 503)
	if st := control(t, f, http.MethodDelete, "/_fake/outage", "", nil); st != 200 {
		t.Fatalf("DELETE outage: %d", st)
	}
	wantStatus(t, patch(t, f, orgURL("o", ""), `{}`, ""), 200)
	for _, body := range []string{`{"mode":"down"}`, `{}`, `{"mode":"503","duration":"x"}`} {
		if st := control(t, f, http.MethodPost, "/_fake/outage", body, nil); st != 400 {
			t.Errorf("POST outage %s: %d, want 400", body, st)
		}
	}
}

func TestControlReads(t *testing.T) {
	t.Parallel()
	f := New(testToken)
	patch(t, f, orgURL("o1", ""), `{"seq":2,"name":"A"}`, "k1")
	patch(t, f, orgURL("o1", ""), `{"seq":1}`, "k2")
	patch(t, f, orgURL("o1", ""), `{"seq":1}`, "k2")

	var stats Stats
	control(t, f, http.MethodGet, "/_fake/stats", "", &stats)
	if diff := cmp.Diff(f.Stats(), stats); diff != "" {
		t.Errorf("/_fake/stats (-want +got):\n%s", diff)
	}

	var reqs []map[string]any
	control(t, f, http.MethodGet, "/_fake/requests?limit=2", "", &reqs)
	if len(reqs) != 2 || reqs[0]["idempotency_key"] != "k2" || reqs[0]["body"] != `{"seq":1}` {
		t.Errorf("/_fake/requests?limit=2 = %v, want the last two, bodies as text", reqs)
	}
	if h, _ := reqs[0]["header"].(map[string]any); h["Authorization"].([]any)[0] != "Bearer [REDACTED]" {
		t.Errorf("recorded header %v not redacted", h)
	}
	control(t, f, http.MethodGet, "/_fake/requests", "", &reqs)
	if len(reqs) != 3 {
		t.Errorf("/_fake/requests has %d records, want 3", len(reqs))
	}

	var applied struct {
		Organization map[string]any    `json:"organization"`
		Bodies       []json.RawMessage `json:"bodies"`
		Keys         []string          `json:"keys"`
	}
	control(t, f, http.MethodGet, "/_fake/applied?account=acc-1&id=o1", "", &applied)
	if len(applied.Bodies) != 2 || applied.Organization["name"] != "A" {
		t.Errorf("/_fake/applied = %+v", applied)
	}
	if diff := cmp.Diff([]string{"k1", "k2"}, applied.Keys); diff != "" {
		t.Errorf("/_fake/applied keys (-want +got):\n%s", diff)
	}

	var keys map[string]int
	control(t, f, http.MethodGet, "/_fake/keys", "", &keys)
	if diff := cmp.Diff(map[string]int{"k1": 1, "k2": 1}, keys); diff != "" {
		t.Errorf("/_fake/keys (-want +got):\n%s", diff)
	}
	var kr KeyRecord
	control(t, f, http.MethodGet, "/_fake/keys?key=k2", "", &kr)
	if diff := cmp.Diff(KeyRecord{Requests: 2, Effects: 1}, kr); diff != "" {
		t.Errorf("/_fake/keys?key=k2 (-want +got):\n%s", diff)
	}
	var ooo, adm map[string]int
	control(t, f, http.MethodGet, "/_fake/out-of-order?field=seq", "", &ooo)
	control(t, f, http.MethodGet, "/_fake/admitted?account=acc-1", "", &adm)
	if ooo["out_of_order"] != 1 || adm["admitted_per_window"] != 3 {
		t.Errorf("out-of-order = %v, admitted = %v; want 1 and 3", ooo, adm)
	}

	for _, c := range []struct {
		method, target string
		status         int
	}{
		{http.MethodGet, "/_fake/requests?limit=-1", 400},
		{http.MethodGet, "/_fake/applied?account=acc-1", 400},
		{http.MethodGet, "/_fake/admitted", 400},
		{http.MethodPost, "/_fake/stats", 405},
		{http.MethodGet, "/_fake/reset", 405},
		{http.MethodGet, "/_fake/nothing", 404},
	} {
		if st := control(t, f, c.method, c.target, "", nil); st != c.status {
			t.Errorf("%s %s: %d, want %d", c.method, c.target, st, c.status)
		}
	}

	if st := control(t, f, http.MethodPost, "/_fake/reset", "", nil); st != 200 {
		t.Fatalf("reset: %d", st)
	}
	want := Stats{ByStatus: map[int]int{}}
	if diff := cmp.Diff(want, f.Stats()); diff != "" {
		t.Errorf("stats after reset (-want +got):\n%s", diff)
	}
}

func TestResetKeepsFaults(t *testing.T) {
	t.Parallel()
	f := New(testToken, WithFaults(Faults{OrgStatus: map[string]int{"bad": 422}}))
	patch(t, f, orgURL("o1", ""), `{"name":"A"}`, "k1")
	f.Reset()
	if _, ok := f.Organization(acc, "o1"); ok || len(f.Requests()) != 0 || f.Key("k1") != (KeyRecord{}) || f.AdmittedPerWindow(acc) != 0 {
		t.Error("Reset left state behind")
	}
	// The key is forgotten too: the same request applies again.
	wantStatus(t, patch(t, f, orgURL("o1", ""), `{"name":"A"}`, "k1"), 200)
	wantStatus(t, patch(t, f, orgURL("bad", ""), `{}`, ""), 422)
}

func TestMaxRecordedRing(t *testing.T) {
	t.Parallel()
	f := New(testToken, WithMaxRecorded(3))
	for _, id := range []string{"a", "b", "c", "d", "e"} {
		patch(t, f, orgURL(id, ""), `{}`, "")
	}
	var got []string
	for _, r := range f.Requests() {
		got = append(got, r.OrgID)
	}
	if diff := cmp.Diff([]string{"c", "d", "e"}, got); diff != "" {
		t.Errorf("recorded (-want +got):\n%s", diff)
	}
	if s := f.Stats(); s.Requests != 5 {
		t.Errorf("Requests = %d, want 5 (counts are complete)", s.Requests)
	}
	none := New(testToken, WithMaxRecorded(0))
	patch(t, none, orgURL("a", ""), `{}`, "")
	if len(none.Requests()) != 0 || none.Stats().Requests != 1 {
		t.Error("WithMaxRecorded(0) should record nothing and still count")
	}
}

func TestDurationJSON(t *testing.T) {
	t.Parallel()
	tests := []struct {
		in      string
		want    Duration
		wantErr bool
	}{
		{`"10s"`, Duration(10 * time.Second), false},
		{`"1m30s"`, Duration(90 * time.Second), false},
		{`1500`, Duration(1500), false},
		{`"ten"`, 0, true},
		{`1.5`, 0, true},
		{`true`, 0, true},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			t.Parallel()
			var got Duration
			err := json.Unmarshal([]byte(tt.in), &got)
			if (err != nil) != tt.wantErr {
				t.Fatalf("Unmarshal(%s) error = %v, want error %v", tt.in, err, tt.wantErr)
			}
			if got != tt.want {
				t.Errorf("Unmarshal(%s) = %v, want %v", tt.in, got, tt.want)
			}
		})
	}
	b, err := json.Marshal(Limit{50, Duration(10 * time.Second)})
	if err != nil || string(b) != `{"requests":50,"window":"10s"}` {
		t.Errorf("Marshal(Limit) = %s, %v", b, err)
	}
}
