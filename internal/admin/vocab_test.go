package admin

import (
	"strings"
	"testing"

	"github.com/orgsync/orgsync/tasks"
	"github.com/orgsync/orgsync/trutoclient"
)

// TestMetricWordsComeFromTheVocabulary: the label values the metrics carry
// are tasks' typed words, and each metric's help names every value it can
// take, so that a word added to the vocabulary without the help (or the
// other way round) fails here.
func TestMetricWordsComeFromTheVocabulary(t *testing.T) {
	t.Parallel()
	m := NewMetrics(MetricsConfig{})
	outcomes := []tasks.Outcome{tasks.OutcomeCompleted, tasks.OutcomeRetry, tasks.OutcomeWaiting, tasks.OutcomeDead, tasks.OutcomeStale}
	waits := []tasks.Class{tasks.ClassOf(trutoclient.ClassRateLimited), tasks.ClassOf(trutoclient.ClassAccountAttention),
		tasks.WaitStopping, tasks.WaitHeld, tasks.WaitJoined, tasks.WaitLedger}
	for _, o := range outcomes {
		if o != tasks.OutcomeWaiting { // observed below, with each reason
			m.Observe(tasks.Event{Outcome: o, Class: tasks.ClassSkipped})
		}
	}
	for _, w := range waits {
		m.Observe(tasks.Event{Outcome: tasks.OutcomeWaiting, Class: w})
	}
	mfs := scrape(t, m.Handler(), "")
	check := func(metric, label string, want []string) {
		t.Helper()
		mf := mfs[metric]
		if mf == nil {
			t.Fatalf("%s not exported", metric)
		}
		got := map[string]bool{}
		for _, s := range mf.GetMetric() {
			for _, l := range s.GetLabel() {
				if l.GetName() == label {
					got[l.GetValue()] = true
				}
			}
		}
		for _, w := range want {
			if !got[w] {
				t.Errorf("%s{%s=%q} missing: the label does not carry the vocabulary's word", metric, label, w)
			}
			if !strings.Contains(mf.GetHelp(), w) {
				t.Errorf("%s's help does not name %q", metric, w)
			}
		}
		if len(got) != len(want) {
			t.Errorf("%s{%s} carries %v; want exactly %v", metric, label, got, want)
		}
	}
	var os, ws []string
	for _, o := range outcomes {
		os = append(os, string(o))
	}
	for _, w := range waits {
		ws = append(ws, string(w))
	}
	check("orgsync_updates_total", "outcome", os)
	check("orgsync_waits_total", "reason", ws)
}
