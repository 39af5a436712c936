package trutotest

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestAuth(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, auth string
	}{
		{"missing", ""},
		{"wrong token", "Bearer nope"},
		{"not bearer", "Basic " + testToken},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			f := New(testToken)
			w := call(t, f, http.MethodPatch, orgURL("o1", ""), `{}`, "Authorization", tt.auth)
			wantStatus(t, w, http.StatusUnauthorized)
			got := decode(t, w.Body.Bytes())
			want := map[string]any{"statusCode": 401.0, "error": "Unauthorized", "message": "Invalid or missing API token."}
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("body (-want +got):\n%s", diff)
			}
			if s := f.Stats(); s.Requests != 1 || s.ByStatus[401] != 1 || s.Effects != 0 {
				t.Errorf("stats = %+v, want 1 request answered 401, no effect", s)
			}
		})
	}
}

func TestRecordRedactsAuthorization(t *testing.T) {
	t.Parallel()
	f := New(testToken)
	patch(t, f, orgURL("o1", "truto_response_format=raw"), `{"name":"A"}`, "k1")
	recs := f.Requests()
	if len(recs) != 1 {
		t.Fatalf("recorded %d requests, want 1", len(recs))
	}
	r := recs[0]
	if got := r.Header.Get("Authorization"); got != "Bearer [REDACTED]" {
		t.Errorf("recorded Authorization = %q, want redacted", got)
	}
	got := struct {
		Method, RawPath, RawQuery, Body, Account, OrgID, Key string
		Status                                               int
	}{r.Method, r.RawPath, r.RawQuery, string(r.Body), r.Account, r.OrgID, r.IdempotencyKey, r.Status}
	want := struct {
		Method, RawPath, RawQuery, Body, Account, OrgID, Key string
		Status                                               int
	}{"PATCH", "/unified/user-directory/organizations/o1", "integrated_account_id=acc-1&truto_response_format=raw",
		`{"name":"A"}`, acc, "o1", "k1", 200}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("record (-want +got):\n%s", diff)
	}
	b, err := json.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(b), testToken) {
		t.Errorf("record JSON leaks the token: %s", b)
	}
}

func TestPathEscaping(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, path string
		status     int
		wantID     string
	}{
		{"plain", "/unified/user-directory/organizations/o1", 200, "o1"},
		{"escaped slashes are one id", "/unified/user-directory/organizations/a%2F..%2Fadmin", 200, "a/../admin"},
		{"escaped question mark", "/unified/user-directory/organizations/x%3Fy=1", 200, "x?y=1"},
		{"behind a prefix", "/api/v2/unified/user-directory/organizations/o2", 200, "o2"},
		{"unescaped slashes miss the route", "/unified/user-directory/organizations/a/../admin", 404, ""},
		{"empty id", "/unified/user-directory/organizations/", 404, ""},
		{"other route", "/unified/user-directory/users/u1", 404, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			f := New(testToken)
			w := patch(t, f, tt.path+"?integrated_account_id="+acc, `{"name":"N"}`, "")
			wantStatus(t, w, tt.status)
			if tt.status != 200 {
				if s := f.Stats(); s.Effects != 0 || s.ByStatus[tt.status] != 1 {
					t.Errorf("stats = %+v, want the %d counted and no effect", s, tt.status)
				}
				return
			}
			if got := decode(t, w.Body.Bytes())["id"]; got != tt.wantID {
				t.Errorf("answered id = %v, want %q", got, tt.wantID)
			}
			if _, ok := f.Organization(acc, tt.wantID); !ok {
				t.Errorf("organization %q not stored", tt.wantID)
			}
		})
	}
}

func TestBadRequests(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, target, body string
		status             int
	}{
		{"no account", "/unified/user-directory/organizations/o1", `{}`, 400},
		{"empty account", "/unified/user-directory/organizations/o1?integrated_account_id=", `{}`, 400},
		{"account twice", orgURL("o1", "integrated_account_id=b"), `{}`, 400},
		{"bad format", orgURL("o1", "truto_response_format=xml"), `{}`, 400},
		{"bad boolean", orgURL("o1", "truto_ignore_remote_data=yes"), `{}`, 400},
		{"body an array", orgURL("o1", ""), `[1]`, 400},
		{"body a string", orgURL("o1", ""), `"x"`, 400},
		{"body empty", orgURL("o1", ""), ``, 400},
		{"body truncated", orgURL("o1", ""), `{"a":`, 400},
		{"two objects", orgURL("o1", ""), `{}{}`, 400},
		{"deep nesting", orgURL("o1", ""), strings.Repeat(`{"a":`, 20000) + "1" + strings.Repeat("}", 20000), 400},
		{"method", orgURL("o1", ""), `{}`, 405},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			f := New(testToken)
			method := http.MethodPatch
			if tt.status == 405 {
				method = http.MethodDelete
			}
			w := call(t, f, method, tt.target, tt.body)
			wantStatus(t, w, tt.status)
			got := decode(t, w.Body.Bytes())
			if got["statusCode"] != float64(tt.status) || got["error"] != http.StatusText(tt.status) || got["message"] == "" {
				t.Errorf("body %v is not Truto's error shape for %d", got, tt.status)
			}
			if _, remote := got["truto_is_remote_error"]; remote {
				t.Errorf("body %v claims a remote error", got)
			}
			if s := f.Stats(); s.Effects != 0 {
				t.Errorf("Effects = %d, want 0", s.Effects)
			}
		})
	}
}

func TestMergeAndFormats(t *testing.T) {
	t.Parallel()
	seed := map[string]any{"name": "Old", "pricing_plan": "free", "licenses": []any{map[string]any{"id": "l1", "name": "Seat"}},
		"remote_data": map[string]any{"tier": "bronze", "meta": map[string]any{"a": 1.0, "b": 2.0}, "tags": []any{"x"}}}
	body := `{"name":"New","remote_data":{"tier":"gold","meta":{"b":3},"tags":["y"]}}`
	remote := map[string]any{"tier": "gold", "meta": map[string]any{"a": 1.0, "b": 3.0}, "tags": []any{"y"}}
	tests := []struct {
		name, query, contentType string
		want                     map[string]any // without timestamps
	}{
		{"unified", "", "application/json", map[string]any{"id": "o1", "name": "New", "pricing_plan": "free",
			"licenses": []any{map[string]any{"id": "l1", "name": "Seat"}}, "remote_data": remote}},
		{"normalized", "truto_response_format=normalized", "application/json", map[string]any{"id": "o1", "name": "New",
			"pricing_plan": "free", "licenses": []any{map[string]any{"id": "l1", "name": "Seat"}}, "remote_data": remote}},
		{"raw", "truto_response_format=raw", "application/json", remote},
		{"stream", "truto_response_format=stream", "application/octet-stream", remote},
		{"ignore remote data", "truto_ignore_remote_data=true", "application/json", map[string]any{"id": "o1", "name": "New",
			"pricing_plan": "free", "licenses": []any{map[string]any{"id": "l1", "name": "Seat"}}}},
		{"exclude fields", "truto_exclude_fields%5B%5D=licenses&truto_exclude_fields%5B%5D=remote_data", "application/json",
			map[string]any{"id": "o1", "name": "New", "pricing_plan": "free"}},
		{"exclude indexed", "truto_exclude_fields[0]=pricing_plan&truto_exclude_fields[1]=remote_data&truto_exclude_fields[1]=licenses",
			"application/json", map[string]any{"id": "o1", "name": "New"}},
		{"raw with exclude", "truto_response_format=raw&truto_exclude_fields[]=tags", "application/json",
			map[string]any{"tier": "gold", "meta": map[string]any{"a": 1.0, "b": 3.0}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			f := New(testToken)
			f.SetOrganization(acc, "o1", seed)
			w := patch(t, f, orgURL("o1", tt.query), body, "")
			wantStatus(t, w, 200)
			if got := w.Header().Get("Content-Type"); got != tt.contentType {
				t.Errorf("Content-Type = %q, want %q", got, tt.contentType)
			}
			got := decode(t, w.Body.Bytes())
			if !strings.HasPrefix(tt.query, "truto_response_format=raw") && tt.name != "stream" {
				if _, ok := got["updated_at"].(string); !ok {
					t.Errorf("updated_at missing from %v", got)
				}
			}
			delete(got, "updated_at")
			delete(got, "created_at")
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("answer (-want +got):\n%s", diff)
			}
			// The stored record is complete whatever the answer left out.
			stored, _ := f.Organization(acc, "o1")
			if diff := cmp.Diff(remote, stored["remote_data"]); diff != "" {
				t.Errorf("stored remote_data (-want +got):\n%s", diff)
			}
		})
	}
}

func TestCreateOnFirstPatchAndGet(t *testing.T) {
	t.Parallel()
	clk := newClock()
	f := New(testToken, WithClock(clk.now))
	wantStatus(t, call(t, f, http.MethodGet, orgURL("new", ""), ""), 404)
	wantStatus(t, patch(t, f, orgURL("new", ""), `{"name":"A","id":"spoofed","remote_data":{"n":1}}`, ""), 200)
	clk.advance(1e9)
	wantStatus(t, patch(t, f, orgURL("new", ""), `{"remote_data":{"m":2}}`, ""), 200)
	w := call(t, f, http.MethodGet, orgURL("new", ""), "")
	wantStatus(t, w, 200)
	want := map[string]any{"id": "new", "name": "A", "remote_data": map[string]any{"n": 1.0, "m": 2.0},
		"created_at": "2025-01-02T03:04:05Z", "updated_at": "2025-01-02T03:04:06Z"}
	if diff := cmp.Diff(want, decode(t, w.Body.Bytes())); diff != "" {
		t.Errorf("GET (-want +got):\n%s", diff)
	}
	if s := f.Stats(); s.Requests != 2 || s.Effects != 2 || s.Unkeyed != 2 {
		t.Errorf("stats = %+v, want 2 PATCHes, 2 effects, 2 unkeyed (GETs not counted)", s)
	}
}

func TestForcedStatus(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name       string
		faults     func(*Faults)
		status     int
		remote     bool
		hasInsight bool
	}{
		{"needs reauth", func(x *Faults) { x.AccountStatus = map[string]int{acc: 401} }, 401, true, false},
		{"forbidden", func(x *Faults) { x.AccountStatus = map[string]int{acc: 403} }, 403, true, true},
		{"not found", func(x *Faults) { x.AccountStatus = map[string]int{acc: 404} }, 404, true, false},
		{"conflict", func(x *Faults) { x.AccountStatus = map[string]int{acc: 409} }, 409, true, false},
		{"unprocessable", func(x *Faults) { x.AccountStatus = map[string]int{acc: 422} }, 422, true, true},
		{"blocked account", func(x *Faults) { x.AccountStatus = map[string]int{acc: 503} }, 503, false, false},
		{"org status", func(x *Faults) { x.OrgStatus = map[string]int{"o1": 422} }, 422, true, true},
		{"other account unaffected", func(x *Faults) { x.AccountStatus = map[string]int{"acc-2": 401} }, 200, false, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			f := New(testToken)
			f.UpdateFaults(tt.faults)
			w := patch(t, f, orgURL("o1", ""), `{"name":"A"}`, "k")
			wantStatus(t, w, tt.status)
			got := decode(t, w.Body.Bytes())
			wantEffects := 0
			if tt.status == 200 {
				wantEffects = 1
			} else {
				if got["statusCode"] != float64(tt.status) {
					t.Errorf("statusCode = %v, want %d", got["statusCode"], tt.status)
				}
				_, hasRaw := got["raw_response"]
				if remote := got["truto_is_remote_error"] == true; remote != tt.remote || hasRaw != tt.remote {
					t.Errorf("remote = %v, raw_response present = %v; want both %v: %v", remote, hasRaw, tt.remote, got)
				}
				if _, ok := got["truto_error_insight"]; ok != tt.hasInsight {
					t.Errorf("truto_error_insight present = %v, want %v", ok, tt.hasInsight)
				}
			}
			if s := f.Stats(); s.Effects != wantEffects {
				t.Errorf("Effects = %d, want %d", s.Effects, wantEffects)
			}
		})
	}
}
