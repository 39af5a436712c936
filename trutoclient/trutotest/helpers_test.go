package trutotest

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"
)

const (
	testToken = "tok-secret"
	acc       = "acc-1"
)

// testClock is a settable clock for rate and outage windows.
type testClock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *testClock { return &testClock{t: time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)} }

func (c *testClock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *testClock) advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// orgURL is the PATCH/GET target for id (escaped) on account acc plus extra query.
func orgURL(escapedID, extra string) string {
	u := "/unified/user-directory/organizations/" + escapedID + "?integrated_account_id=" + acc
	if extra != "" {
		u += "&" + extra
	}
	return u
}

// call sends one request straight to the handler with the right token.
func call(t *testing.T, h http.Handler, method, target, body string, hdr ...string) *httptest.ResponseRecorder {
	t.Helper()
	req := httptest.NewRequest(method, target, strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+testToken)
	req.Header.Set("Content-Type", "application/json")
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	w := httptest.NewRecorder()
	h.ServeHTTP(w, req)
	return w
}

// patch sends a keyed PATCH (key "" sends none).
func patch(t *testing.T, h http.Handler, target, body, key string) *httptest.ResponseRecorder {
	t.Helper()
	if key == "" {
		return call(t, h, http.MethodPatch, target, body)
	}
	return call(t, h, http.MethodPatch, target, body, "Idempotency-Key", key)
}

// decode parses a JSON answer into a map.
func decode(t *testing.T, b []byte) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatalf("answer is not a JSON object: %v: %s", err, b)
	}
	return m
}

// wantStatus fails unless w answered status.
func wantStatus(t *testing.T, w *httptest.ResponseRecorder, status int) {
	t.Helper()
	if w.Code != status {
		t.Fatalf("status = %d, want %d; body %s", w.Code, status, w.Body)
	}
}
