package trutotest

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"sync"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestReplay(t *testing.T) {
	t.Parallel()
	f := New(testToken)
	first := patch(t, f, orgURL("o1", ""), `{"name":"A"}`, "k1")
	wantStatus(t, first, 200)
	if got := first.Header().Get("Idempotent-Replayed"); got != "" {
		t.Errorf("first answer has Idempotent-Replayed %q", got)
	}
	// Same body modulo whitespace, and another format: still the first answer.
	again := patch(t, f, orgURL("o1", "truto_response_format=raw"), "{ \"name\" : \"A\" }", "k1")
	wantStatus(t, again, 200)
	if got := again.Header().Get("Idempotent-Replayed"); got != "true" {
		t.Errorf("Idempotent-Replayed = %q, want true", got)
	}
	if !bytes.Equal(first.Body.Bytes(), again.Body.Bytes()) {
		t.Errorf("replay body %s, want the stored %s", again.Body, first.Body)
	}
	want := Stats{Requests: 2, ByStatus: map[int]int{200: 2}, Effects: 1, Replays: 1}
	if diff := cmp.Diff(want, f.Stats()); diff != "" {
		t.Errorf("stats (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(KeyRecord{Requests: 2, Effects: 1}, f.Key("k1")); diff != "" {
		t.Errorf("Key(k1) (-want +got):\n%s", diff)
	}
}

func TestKeyConflict(t *testing.T) {
	t.Parallel()
	tests := []struct{ name, target, body string }{
		{"other body", orgURL("o1", ""), `{"name":"B"}`},
		{"other organization", orgURL("o2", ""), `{"name":"A"}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			f := New(testToken)
			wantStatus(t, patch(t, f, orgURL("o1", ""), `{"name":"A"}`, "k1"), 200)
			w := patch(t, f, tt.target, tt.body, "k1")
			wantStatus(t, w, 422)
			if got := decode(t, w.Body.Bytes()); got["truto_is_remote_error"] != nil {
				t.Errorf("key conflict claims a remote error: %v", got)
			}
			want := Stats{Requests: 2, ByStatus: map[int]int{200: 1, 422: 1}, Effects: 1, KeyConflicts: 1}
			if diff := cmp.Diff(want, f.Stats()); diff != "" {
				t.Errorf("stats (-want +got):\n%s", diff)
			}
		})
	}
}

func TestErrorsAreNotCached(t *testing.T) {
	t.Parallel()
	f := New(testToken, WithFaults(Faults{ErrorRates: map[int]float64{500: 1}}))
	wantStatus(t, patch(t, f, orgURL("o1", ""), `{"name":"A"}`, "k1"), 500)
	f.UpdateFaults(func(x *Faults) { x.ErrorRates = nil })
	w := patch(t, f, orgURL("o1", ""), `{"name":"A"}`, "k1")
	wantStatus(t, w, 200)
	if w.Header().Get("Idempotent-Replayed") != "" {
		t.Error("the retry after an error was answered from the cache")
	}
	want := Stats{Requests: 2, ByStatus: map[int]int{200: 1, 500: 1}, Effects: 1}
	if diff := cmp.Diff(want, f.Stats()); diff != "" {
		t.Errorf("stats (-want +got):\n%s", diff)
	}
}

func TestAfterApplyThenRetry(t *testing.T) {
	t.Parallel()
	for _, status := range []int{502, 504} {
		t.Run(fmt.Sprint(status), func(t *testing.T) {
			t.Parallel()
			f := New(testToken, WithFaults(Faults{AfterApplyRates: map[int]float64{status: 1}}))
			wantStatus(t, patch(t, f, orgURL("o1", ""), `{"name":"A"}`, "k1"), status)
			if got, _ := f.Organization(acc, "o1"); got["name"] != "A" {
				t.Fatalf("organization = %v, want the update applied despite the %d", got, status)
			}
			f.UpdateFaults(func(x *Faults) { x.AfterApplyRates = nil })
			w := patch(t, f, orgURL("o1", ""), `{"name":"A"}`, "k1")
			wantStatus(t, w, 200)
			if w.Header().Get("Idempotent-Replayed") != "true" || decode(t, w.Body.Bytes())["name"] != "A" {
				t.Errorf("retry answered %s (replayed %q), want the stored organization", w.Body, w.Header().Get("Idempotent-Replayed"))
			}
			want := Stats{Requests: 2, ByStatus: map[int]int{200: 1, status: 1}, Effects: 1, Replays: 1}
			if diff := cmp.Diff(want, f.Stats()); diff != "" {
				t.Errorf("stats (-want +got):\n%s", diff)
			}
		})
	}
}

func TestAfterApplyWithoutKeyDuplicates(t *testing.T) {
	t.Parallel()
	// Without a key, a client that retries a 502 applies twice: the fake must show it.
	f := New(testToken, WithFaults(Faults{AfterApplyRates: map[int]float64{502: 1}}))
	wantStatus(t, patch(t, f, orgURL("o1", ""), `{"seq":1}`, ""), 502)
	wantStatus(t, patch(t, f, orgURL("o1", ""), `{"seq":1}`, ""), 502)
	if diff := cmp.Diff([]string{"", ""}, f.AppliedKeys(acc, "o1")); diff != "" {
		t.Errorf("AppliedKeys (-want +got):\n%s", diff)
	}
	if s := f.Stats(); s.Effects != 2 || s.Unkeyed != 2 {
		t.Errorf("stats = %+v, want 2 effects, 2 unkeyed", s)
	}
}

func TestIgnoreIdempotency(t *testing.T) {
	t.Parallel()
	f := New(testToken, WithFaults(Faults{IgnoreIdempotency: true}))
	for range 3 {
		w := patch(t, f, orgURL("o1", ""), `{"name":"A"}`, "k1")
		wantStatus(t, w, 200)
		if w.Header().Get("Idempotent-Replayed") != "" {
			t.Error("replayed although idempotency is ignored")
		}
	}
	wantStatus(t, patch(t, f, orgURL("o2", ""), `{"name":"A"}`, "k2"), 200)
	want := Stats{Requests: 4, ByStatus: map[int]int{200: 4}, Effects: 4, DuplicateEffects: 2}
	if diff := cmp.Diff(want, f.Stats()); diff != "" {
		t.Errorf("stats (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(map[string]int{"k1": 3, "k2": 1}, f.EffectsByKey()); diff != "" {
		t.Errorf("EffectsByKey (-want +got):\n%s", diff)
	}
}

func TestEffectsByKeyShowsLostKeys(t *testing.T) {
	t.Parallel()
	f := New(testToken, WithFaults(Faults{AccountStatus: map[string]int{acc: 422}}))
	patch(t, f, orgURL("o1", ""), `{}`, "lost")
	if diff := cmp.Diff(map[string]int{"lost": 0}, f.EffectsByKey()); diff != "" {
		t.Errorf("EffectsByKey (-want +got):\n%s", diff)
	}
}

func TestOutOfOrderAndApplied(t *testing.T) {
	t.Parallel()
	f := New(testToken)
	for i, seq := range []int{1, 3, 2, 4, 2} { // 2 after 3, and 2 after 4: two out of order
		patch(t, f, orgURL("o1", ""), fmt.Sprintf(`{"seq":%d}`, seq), fmt.Sprintf("k%d", i))
	}
	patch(t, f, orgURL("o2", ""), `{"seq":9}`, "")
	patch(t, f, orgURL("o2", ""), `{"name":"no seq"}`, "")
	patch(t, f, orgURL("o2", ""), `{"seq":10}`, "")
	if got := f.OutOfOrder("seq"); got != 2 {
		t.Errorf("OutOfOrder(seq) = %d, want 2", got)
	}
	if got := f.OutOfOrder("absent"); got != 0 {
		t.Errorf("OutOfOrder(absent) = %d, want 0", got)
	}
	var got []string
	for _, b := range f.Applied(acc, "o1") {
		got = append(got, string(b))
	}
	want := []string{`{"seq":1}`, `{"seq":3}`, `{"seq":2}`, `{"seq":4}`, `{"seq":2}`}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("Applied (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string{"k0", "k1", "k2", "k3", "k4"}, f.AppliedKeys(acc, "o1")); diff != "" {
		t.Errorf("AppliedKeys (-want +got):\n%s", diff)
	}
	if f.Applied(acc, "none") != nil || f.AppliedKeys(acc, "none") != nil {
		t.Error("an unknown organization has applied bodies")
	}
}

func TestConcurrentSameKeyAppliesOnce(t *testing.T) {
	t.Parallel()
	s := NewServer(testToken, WithFaults(Faults{Latency: Duration(1e6)})) // latency widens the race window
	defer s.Close()
	const n = 50
	var wg sync.WaitGroup
	statuses := make(chan int, n)
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			req, err := http.NewRequest(http.MethodPatch, s.URL+orgURL("o1", ""), bytes.NewReader([]byte(`{"name":"A"}`)))
			if err != nil {
				t.Error(err)
				return
			}
			req.Header.Set("Authorization", "Bearer "+testToken)
			req.Header.Set("Idempotency-Key", "same")
			resp, err := s.Client().Do(req)
			if err != nil {
				t.Error(err)
				return
			}
			resp.Body.Close()
			statuses <- resp.StatusCode
		}()
	}
	wg.Wait()
	close(statuses)
	for st := range statuses {
		if st != 200 {
			t.Errorf("status %d, want 200", st)
		}
	}
	want := Stats{Requests: n, ByStatus: map[int]int{200: n}, Effects: 1, Replays: n - 1}
	if diff := cmp.Diff(want, s.Stats()); diff != "" {
		t.Errorf("stats (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(KeyRecord{Requests: n, Effects: 1}, s.Key("same")); diff != "" {
		t.Errorf("Key (-want +got):\n%s", diff)
	}
}

func TestErrorRatesReproducible(t *testing.T) {
	t.Parallel()
	run := func(seed uint64) []int {
		f := New(testToken, WithSeed(seed), WithFaults(Faults{ErrorRates: map[int]float64{500: 0.3, 429: 0.1, 503: 0.1}}))
		var got []int
		for i := range 200 {
			got = append(got, patch(t, f, orgURL(fmt.Sprint(i), ""), `{}`, "").Code)
		}
		s := f.Stats()
		if s.Effects != s.ByStatus[200] || s.RateLimited != s.ByStatus[429] || s.Requests != 200 {
			t.Errorf("stats %+v inconsistent", s)
		}
		return got
	}
	a, b := run(7), run(7)
	if diff := cmp.Diff(a, b); diff != "" {
		t.Errorf("same seed, different faults (-first +second):\n%s", diff)
	}
	counts := map[int]int{}
	for _, s := range a {
		counts[s]++
	}
	for _, s := range []int{200, 429, 500, 503} {
		if counts[s] == 0 {
			t.Errorf("no %d in 200 draws: %v", s, counts)
		}
	}
}

func TestInjectedErrorBodies(t *testing.T) {
	t.Parallel()
	tests := []struct {
		status      int
		contentType string
		retryAfter  string
	}{
		{500, "application/json", ""},
		{429, "application/json", "1"},
		{503, "text/html; charset=utf-8", ""}, // a transient proxy 503, not "account blocked"
	}
	for _, tt := range tests {
		t.Run(fmt.Sprint(tt.status), func(t *testing.T) {
			t.Parallel()
			f := New(testToken, WithFaults(Faults{ErrorRates: map[int]float64{tt.status: 1}}))
			w := patch(t, f, orgURL("o1", ""), `{}`, "")
			wantStatus(t, w, tt.status)
			if got := w.Header().Get("Content-Type"); got != tt.contentType {
				t.Errorf("Content-Type = %q, want %q", got, tt.contentType)
			}
			if got := w.Header().Get("Retry-After"); got != tt.retryAfter {
				t.Errorf("Retry-After = %q, want %q", got, tt.retryAfter)
			}
			if tt.contentType == "application/json" && !json.Valid(w.Body.Bytes()) {
				t.Errorf("body is not JSON: %s", w.Body)
			}
		})
	}
}
