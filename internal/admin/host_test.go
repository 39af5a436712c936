package admin

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// TestAdminChecksHost sends what a DNS-rebinding page would (its own name as
// Host, on a loopback connection) and what operators, probes and scrapers
// send, with and without a token and allowed names.
func TestAdminChecksHost(t *testing.T) {
	t.Parallel()
	m := NewMetrics(MetricsConfig{})
	loopback := NewHandler(Options{Metrics: m, Circuit: fixedCircuit{}})
	named := NewHandler(Options{Metrics: m, Circuit: fixedCircuit{}, AllowedHosts: []string{"orgsync.internal", "Worker:9464"}})
	anyHost := NewHandler(Options{Metrics: m, Circuit: fixedCircuit{}, AllowedHosts: []string{"*"}})
	withToken := NewHandler(Options{Metrics: m, Circuit: fixedCircuit{}, Token: adminToken})
	tests := []struct {
		name    string
		handler http.Handler
		host    string
		path    string
		want    int
	}{
		{"rebinding page reads the API", loopback, "evil.example:9464", "/api/circuit", 421},
		{"rebinding page reads metrics", loopback, "evil.example", "/metrics", 421},
		{"rebinding page reads the index", loopback, "evil.example:9464", "/", 421},
		{"rebinding page, unknown path", loopback, "evil.example:9464", "/nope", 421},
		{"a name that ends in localhost", loopback, "localhost.evil.example:9464", "/api/circuit", 421},
		{"empty host", loopback, "", "/api/circuit", 421},
		{"health stays open", loopback, "evil.example:9464", "/healthz", 200},
		{"readiness stays open", loopback, "evil.example:9464", "/readyz", 200},
		{"127.0.0.1 with port", loopback, "127.0.0.1:9464", "/api/circuit", 200},
		{"127.0.0.1 without port", loopback, "127.0.0.1", "/api/circuit", 200},
		{"localhost with port", loopback, "localhost:9464", "/api/circuit", 200},
		{"localhost upper case, trailing dot", loopback, "LOCALHOST.:9464", "/api/circuit", 200},
		{"[::1] with port", loopback, "[::1]:9464", "/api/circuit", 200},
		{"[::1] without port", loopback, "[::1]", "/api/circuit", 200},
		{"pod IP (a scraper by address)", loopback, "10.1.2.3:9464", "/metrics", 200},
		{"allowed name", named, "orgsync.internal:9464", "/api/circuit", 200},
		{"allowed name, any port, any case", named, "WORKER:80", "/api/circuit", 200},
		{"allowed list still refuses others", named, "evil.example", "/api/circuit", 421},
		{"allowed list keeps localhost", named, "localhost:9464", "/api/circuit", 200},
		{"star accepts any", anyHost, "evil.example:9464", "/api/circuit", 200},
		{"host checked before the token", withToken, "evil.example:9464", "/api/circuit", 421},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			req := httptest.NewRequest(http.MethodGet, "http://127.0.0.1:9464"+tt.path, nil)
			req.Host = tt.host
			rec := httptest.NewRecorder()
			tt.handler.ServeHTTP(rec, req)
			if rec.Code != tt.want {
				t.Errorf("GET %s with Host %q: %d %s, want %d", tt.path, tt.host, rec.Code, rec.Body, tt.want)
			}
			if tt.want == 421 && !strings.Contains(rec.Body.String(), "--admin-allowed-hosts") {
				t.Errorf("the refusal does not say what to do: %s", rec.Body)
			}
		})
	}
}

func TestParseAllowedHosts(t *testing.T) {
	t.Parallel()
	tests := []struct {
		in      string
		want    []string
		wantErr bool
	}{
		{"", nil, false},
		{" , ", nil, false},
		{"*", []string{"*"}, false},
		{"orgsync.internal, worker:9464,[::1]:9464", []string{"orgsync.internal", "worker:9464", "[::1]:9464"}, false},
		{"http://worker:9464", nil, true},
		{"worker/metrics", nil, true},
		{"two words", nil, true},
		{":9464", nil, true},
	}
	for _, tt := range tests {
		got, err := ParseAllowedHosts(tt.in)
		if (err != nil) != tt.wantErr {
			t.Errorf("ParseAllowedHosts(%q) error %v, want error %v", tt.in, err, tt.wantErr)
			continue
		}
		if diff := cmp.Diff(tt.want, got); diff != "" {
			t.Errorf("ParseAllowedHosts(%q) (-want +got):\n%s", tt.in, diff)
		}
	}
}
