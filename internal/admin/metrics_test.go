package admin

import (
	"context"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/orgsync/orgsync/internal/admin/admintest"
	"github.com/orgsync/orgsync/internal/circuit"
	"github.com/orgsync/orgsync/tasks"
)

// scrape fetches /metrics from h and parses the text format.
func scrape(t *testing.T, h http.Handler, token string) map[string]*dto.MetricFamily {
	t.Helper()
	req := httptest.NewRequest(http.MethodGet, "http://127.0.0.1:9464/metrics", nil)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	if rec.Code != http.StatusOK {
		t.Fatalf("GET /metrics: %d %s", rec.Code, rec.Body)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := p.TextToMetricFamilies(rec.Body)
	if err != nil {
		t.Fatalf("parse /metrics: %v", err)
	}
	return mfs
}

func TestMetricsObserveCountsEvents(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		events []tasks.Event
		want   map[string]float64
	}{
		{
			name: "completed and dead",
			events: []tasks.Event{
				{TaskID: "a", Outcome: tasks.OutcomeCompleted, Class: "success", StatusCode: 200, Sent: 1, Latency: 20 * time.Millisecond},
				{TaskID: "b", Outcome: tasks.OutcomeCompleted, Class: "success", StatusCode: 200, Sent: 1, Latency: 30 * time.Millisecond},
				{TaskID: "c", Outcome: tasks.OutcomeDead, Class: "permanent", StatusCode: 422, Sent: 1, Latency: time.Millisecond},
			},
			want: map[string]float64{
				"orgsync_updates_total{class=success,outcome=completed}": 2,
				"orgsync_updates_total{class=permanent,outcome=dead}":    1,
				"orgsync_attempts_total{status=200}":                     2,
				"orgsync_attempts_total{status=422}":                     1,
				"orgsync_upstream_latency_seconds{}_count":               3,
			},
		},
		{
			name: "waits are not attempts",
			events: []tasks.Event{
				{TaskID: "a", Outcome: tasks.OutcomeWaiting, Class: "held"},
				{TaskID: "b", Outcome: tasks.OutcomeWaiting, Class: "stopping"},
				{TaskID: "c", Outcome: tasks.OutcomeWaiting, Class: ""},
				{TaskID: "d", Outcome: tasks.OutcomeWaiting, Class: "rate_limited", StatusCode: 429, Sent: 1, Latency: time.Millisecond},
			},
			want: map[string]float64{
				"orgsync_updates_total{class=held,outcome=waiting}":         1,
				"orgsync_updates_total{class=stopping,outcome=waiting}":     1,
				"orgsync_updates_total{class=none,outcome=waiting}":         1,
				"orgsync_updates_total{class=rate_limited,outcome=waiting}": 1,
				"orgsync_waits_total{reason=held}":                          1,
				"orgsync_waits_total{reason=stopping}":                      1,
				"orgsync_waits_total{reason=none}":                          1,
				"orgsync_waits_total{reason=rate_limited}":                  1,
				"orgsync_attempts_total{status=429}":                        1,
				"orgsync_upstream_latency_seconds{}_count":                  1,
			},
		},
		{
			name: "in-call retries have no status",
			events: []tasks.Event{
				{TaskID: "a", Outcome: tasks.OutcomeRetry, Class: "transient", StatusCode: 0, Sent: 3},
				{TaskID: "b", Outcome: tasks.OutcomeCompleted, Class: "success", StatusCode: 200, Sent: 2, Latency: time.Millisecond},
			},
			want: map[string]float64{
				"orgsync_updates_total{class=transient,outcome=retry}":   1,
				"orgsync_updates_total{class=success,outcome=completed}": 1,
				"orgsync_attempts_total{status=none}":                    4,
				"orgsync_attempts_total{status=200}":                     1,
				"orgsync_upstream_latency_seconds{}_count":               1,
			},
		},
		{
			name: "skipped and odd events",
			events: []tasks.Event{
				{TaskID: "a", Outcome: tasks.OutcomeCompleted, Class: "skipped"},
				{TaskID: "b", Outcome: "", Class: "", StatusCode: 99999, Sent: 1},
			},
			want: map[string]float64{
				"orgsync_updates_total{class=skipped,outcome=completed}": 1,
				"orgsync_updates_total{class=none,outcome=unknown}":      1,
				"orgsync_attempts_total{status=none}":                    1,
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			m := NewMetrics(MetricsConfig{})
			for _, e := range tt.events {
				m.Observe(e)
			}
			got := admintest.Series(scrape(t, m.Handler(), ""), "orgsync_")
			for k, v := range got {
				// Series that exist with zero observations are not part of what a table states.
				if v == 0 {
					delete(got, k)
				}
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("metrics (-want +got):\n%s", diff)
			}
		})
	}
}

// blockingCircuit answers only when its context ends, like a Redis that hangs.
type blockingCircuit struct{}

func (blockingCircuit) State(ctx context.Context) (circuit.State, error) {
	<-ctx.Done()
	return circuit.State{}, ctx.Err()
}

type fixedCircuit struct{ open bool }

func (c fixedCircuit) State(context.Context) (circuit.State, error) {
	return circuit.State{Open: c.open}, nil
}

func TestMetricsScrapeTimeoutLeavesOutOnlyTheSlowSource(t *testing.T) {
	t.Parallel()
	m := NewMetrics(MetricsConfig{Circuit: blockingCircuit{}, ScrapeTimeout: 50 * time.Millisecond})
	m.Observe(tasks.Event{Outcome: tasks.OutcomeCompleted, Class: "success", StatusCode: 200, Sent: 1})
	got := admintest.Series(scrape(t, m.Handler(), ""), "orgsync_")
	if _, ok := got["orgsync_circuit_open{}"]; ok {
		t.Errorf("orgsync_circuit_open present although its read timed out")
	}
	if got["orgsync_updates_total{class=success,outcome=completed}"] != 1 {
		t.Errorf("the event counters went missing with the slow source: %v", got)
	}
	// The failure is counted during the scrape, so the next scrape shows it.
	got = admintest.Series(scrape(t, m.Handler(), ""), "orgsync_")
	if got["orgsync_scrape_errors_total{source=circuit}"] < 1 {
		t.Errorf("orgsync_scrape_errors_total{source=circuit} = %v, want >= 1", got["orgsync_scrape_errors_total{source=circuit}"])
	}
}

func TestMetricsCircuitGauge(t *testing.T) {
	t.Parallel()
	tests := []struct {
		open bool
		want float64
	}{{false, 0}, {true, 1}}
	for _, tt := range tests {
		m := NewMetrics(MetricsConfig{Circuit: fixedCircuit{open: tt.open}})
		got := admintest.Series(scrape(t, m.Handler(), ""), "orgsync_circuit_open")
		if diff := cmp.Diff(map[string]float64{"orgsync_circuit_open{}": tt.want}, got); diff != "" {
			t.Errorf("open=%v (-want +got):\n%s", tt.open, diff)
		}
	}
}

// TestMetricsCompletionTime: a completion's enqueue time comes with its
// event, so the enqueue-to-completion histogram counts it at once; a run the
// ledger already knew ("skipped") is not counted twice.
func TestMetricsCompletionTime(t *testing.T) {
	t.Parallel()
	now := time.Now()
	m := NewMetrics(MetricsConfig{Now: func() time.Time { return now }})
	m.Observe(tasks.Event{TaskID: "u_1", Outcome: tasks.OutcomeCompleted, Class: "success", StatusCode: 200, Sent: 1,
		EnqueuedAt: now.Add(-90 * time.Second)})
	m.Observe(tasks.Event{TaskID: "u_1", Outcome: tasks.OutcomeCompleted, Class: "skipped", EnqueuedAt: now.Add(-90 * time.Second)})
	got := admintest.Series(scrape(t, m.Handler(), ""), "orgsync_enqueue_to_completion_seconds")
	want := map[string]float64{"orgsync_enqueue_to_completion_seconds{}_count": 1}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("completion timing (-want +got):\n%s", diff)
	}
	mf := scrape(t, m.Handler(), "")["orgsync_enqueue_to_completion_seconds"]
	if sum := mf.GetMetric()[0].GetHistogram().GetSampleSum(); sum != 90 {
		t.Errorf("completion timing sums %v s, want 90", sum)
	}
}
