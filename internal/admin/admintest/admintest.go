// Package admintest helps tests read what the admin endpoint's /metrics serves.
package admintest

import (
	"sort"
	"strings"

	dto "github.com/prometheus/client_model/go"
)

// Series flattens the metric families whose names start with prefix into
// "name{k=v,...}" -> value (a histogram gives its "_count"), so a test can
// compare a scrape with cmp.Diff.
func Series(mfs map[string]*dto.MetricFamily, prefix string) map[string]float64 {
	out := map[string]float64{}
	for name, mf := range mfs {
		if !strings.HasPrefix(name, prefix) {
			continue
		}
		for _, m := range mf.GetMetric() {
			var labels []string
			for _, l := range m.GetLabel() {
				labels = append(labels, l.GetName()+"="+l.GetValue())
			}
			sort.Strings(labels)
			key := name + "{" + strings.Join(labels, ",") + "}"
			switch {
			case m.Counter != nil:
				out[key] = m.GetCounter().GetValue()
			case m.Gauge != nil:
				out[key] = m.GetGauge().GetValue()
			case m.Histogram != nil:
				out[key+"_count"] = float64(m.GetHistogram().GetSampleCount())
			}
		}
	}
	return out
}
