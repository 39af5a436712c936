package trutotest

import (
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func TestAccountLimitWindowBoundary(t *testing.T) {
	t.Parallel()
	clk := newClock()
	f := New(testToken, WithClock(clk.now), WithFaults(Faults{AccountLimit: Limit{3, Duration(10 * time.Second)}}))
	for i := range 3 {
		wantStatus(t, patch(t, f, orgURL("o1", ""), fmt.Sprintf(`{"seq":%d}`, i), ""), 200)
		clk.advance(time.Second)
	}
	// t=3s: the window [t-10s, t] holds 3 admitted requests; the oldest leaves at t=10s.
	w := patch(t, f, orgURL("o1", ""), `{}`, "")
	wantStatus(t, w, 429)
	gotHeaders := map[string]string{}
	for _, h := range []string{"Retry-After", "Ratelimit-Limit", "Ratelimit-Remaining", "Ratelimit-Reset"} {
		gotHeaders[h] = w.Header().Get(h)
	}
	wantHeaders := map[string]string{"Retry-After": "7", "Ratelimit-Limit": "3;w=10", "Ratelimit-Remaining": "0", "Ratelimit-Reset": "7"}
	if diff := cmp.Diff(wantHeaders, gotHeaders); diff != "" {
		t.Errorf("429 headers (-want +got):\n%s", diff)
	}
	if got := decode(t, w.Body.Bytes()); got["truto_is_remote_error"] != nil || got["statusCode"] != 429.0 {
		t.Errorf("429 body = %v, want Truto's own error", got)
	}
	// A 429 does not count: many of them change nothing.
	for range 5 {
		wantStatus(t, patch(t, f, orgURL("o1", ""), `{}`, ""), 429)
	}
	clk.advance(7*time.Second - time.Nanosecond) // one nanosecond before the oldest leaves
	w = patch(t, f, orgURL("o1", ""), `{}`, "")
	wantStatus(t, w, 429)
	if got := w.Header().Get("Retry-After"); got != "1" {
		t.Errorf("Retry-After = %q, want 1 (rounded up)", got)
	}
	clk.advance(time.Nanosecond) // exactly 10 s after the first: it has left
	wantStatus(t, patch(t, f, orgURL("o1", ""), `{}`, ""), 200)
	wantStatus(t, patch(t, f, orgURL("o1", ""), `{}`, ""), 429)
	// Other accounts have their own window.
	wantStatus(t, patch(t, f, "/unified/user-directory/organizations/o1?integrated_account_id=acc-2", `{}`, ""), 200)

	want := Stats{Requests: 13, ByStatus: map[int]int{200: 5, 429: 8}, Effects: 5, RateLimited: 8, Unkeyed: 13}
	if diff := cmp.Diff(want, f.Stats()); diff != "" {
		t.Errorf("stats (-want +got):\n%s", diff)
	}
	if got := f.AdmittedPerWindow(acc); got != 3 {
		t.Errorf("AdmittedPerWindow = %d, want 3", got)
	}
	if got := f.AdmittedPerWindow("acc-2"); got != 1 {
		t.Errorf("AdmittedPerWindow(acc-2) = %d, want 1", got)
	}
}

func TestTokenLimitBeforeAccountLimit(t *testing.T) {
	t.Parallel()
	clk := newClock()
	f := New(testToken, WithClock(clk.now), WithFaults(Faults{
		TokenLimit:   Limit{4, Duration(10 * time.Second)},
		AccountLimit: Limit{2, Duration(10 * time.Second)},
	}))
	target := func(a string) string { return "/unified/user-directory/organizations/o?integrated_account_id=" + a }
	var got []int
	for _, a := range []string{"a", "a", "a", "b", "b", "c", "c"} {
		w := patch(t, f, target(a), `{}`, "")
		got = append(got, w.Code)
		if w.Code == 429 && a == "c" && w.Header().Get("Ratelimit-Limit") != "4;w=10" {
			t.Errorf("token 429 names limit %q, want 4;w=10", w.Header().Get("Ratelimit-Limit"))
		}
	}
	// a: 2 admitted then its own limit; b: 2 admitted (token now at 4); c: token limit.
	if diff := cmp.Diff([]int{200, 200, 429, 200, 200, 429, 429}, got); diff != "" {
		t.Errorf("statuses (-want +got):\n%s", diff)
	}
	if got := f.AdmittedPerWindow("c"); got != 0 {
		t.Errorf("AdmittedPerWindow(c) = %d, want 0", got)
	}
}

func TestAdmittedPerWindowSlides(t *testing.T) {
	t.Parallel()
	clk := newClock()
	f := New(testToken, WithClock(clk.now), WithFaults(Faults{})) // no limits: the window is still 10 s
	// 4 requests every 3 s: any 10 s window (open at its start) holds at most 4.
	for range 10 {
		patch(t, f, orgURL("o", ""), `{}`, "")
		clk.advance(3 * time.Second)
	}
	if got := f.AdmittedPerWindow(acc); got != 4 {
		t.Errorf("AdmittedPerWindow = %d, want 4", got)
	}
	for range 6 { // a burst
		patch(t, f, orgURL("o", ""), `{}`, "")
	}
	if got := f.AdmittedPerWindow(acc); got != 9 {
		t.Errorf("AdmittedPerWindow after a burst = %d, want 9", got)
	}
	if got := f.AdmittedPerWindow("unknown"); got != 0 {
		t.Errorf("AdmittedPerWindow(unknown) = %d, want 0", got)
	}
}

func TestRateLimitHeadersOnSuccess(t *testing.T) {
	t.Parallel()
	clk := newClock()
	f := New(testToken, WithClock(clk.now), WithFaults(Faults{AccountLimit: Limit{50, Duration(10 * time.Second)}, RateLimitHeaders: true}))
	patch(t, f, orgURL("o", ""), `{}`, "")
	clk.advance(2500 * time.Millisecond)
	w := patch(t, f, orgURL("o", ""), `{}`, "")
	wantStatus(t, w, http.StatusOK)
	got := []string{w.Header().Get("Ratelimit-Limit"), w.Header().Get("Ratelimit-Remaining"), w.Header().Get("Ratelimit-Reset")}
	if diff := cmp.Diff([]string{"50;w=10", "48", "8"}, got); diff != "" {
		t.Errorf("ratelimit headers (-want +got):\n%s", diff)
	}
	off := New(testToken)
	if h := patch(t, off, orgURL("o", ""), `{}`, "").Header().Get("Ratelimit-Limit"); h != "" {
		t.Errorf("ratelimit-limit %q sent although RateLimitHeaders is off", h)
	}
}

func TestDefaultLimits(t *testing.T) {
	t.Parallel()
	clk := newClock()
	f := New(testToken, WithClock(clk.now))
	for i := range 51 {
		w := patch(t, f, orgURL("o", ""), `{}`, "")
		if want := map[bool]int{true: 200, false: 429}[i < 50]; w.Code != want {
			t.Fatalf("request %d: status %d, want %d", i+1, w.Code, want)
		}
	}
	if got := f.AdmittedPerWindow(acc); got != 50 {
		t.Errorf("AdmittedPerWindow = %d, want 50", got)
	}
}

func TestSlidingWindowMatchesBruteForce(t *testing.T) {
	t.Parallel()
	clk := newClock()
	const n, limit = 6000, 1000
	f := New(testToken, WithClock(clk.now), WithMaxRecorded(n),
		WithFaults(Faults{AccountLimit: Limit{limit, Duration(10 * time.Second)}}))
	for range n {
		patch(t, f, orgURL("o", ""), `{}`, "")
		clk.advance(5 * time.Millisecond)
	}
	// Recompute from the records: no 10 s window may hold more than limit admissions, and
	// every 429 must have come when the window was full.
	var admitted []time.Time
	for _, r := range f.Requests() {
		inWindow := 0
		for i := len(admitted) - 1; i >= 0 && r.Time.Sub(admitted[i]) < 10*time.Second; i-- {
			inWindow++
		}
		switch r.Status {
		case 200:
			if inWindow >= limit {
				t.Fatalf("admitted at %v with %d already in the window", r.Time, inWindow)
			}
			admitted = append(admitted, r.Time)
		case 429:
			if inWindow < limit {
				t.Fatalf("429 at %v with only %d in the window", r.Time, inWindow)
			}
		default:
			t.Fatalf("status %d", r.Status)
		}
	}
	s := f.Stats()
	if s.Effects != len(admitted) || s.Effects+s.RateLimited != n {
		t.Errorf("stats = %+v, want %d effects and the rest 429", s, len(admitted))
	}
	if got := f.AdmittedPerWindow(acc); got != limit {
		t.Errorf("AdmittedPerWindow = %d, want %d", got, limit)
	}
}
