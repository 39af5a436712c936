// Package admin serves a worker's admin endpoint: health checks, Prometheus
// metrics, the asynq queue UI (asynqmon) and a small read-only JSON API over
// orgsync's own records, all but health behind an optional bearer token.
// docs/admin.md lists the endpoints and metrics.
package admin

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/orgsync/orgsync/internal/when"
	"github.com/orgsync/orgsync/tasks"
)

// Limits of GET /api/deadletters.
const (
	DefaultListLimit = 100
	MaxListLimit     = 10_000
)

// Limits of GET /api/runs/{name}/results: lines streamed when the request
// names no limit, and the most one request may ask for (each line can carry a
// stored response of up to tasks.MaxResultBody).
const (
	DefaultResultsLimit = 100
	MaxResultsLimit     = 10_000
)

// streamTimeout bounds the Redis reads of one NDJSON listing
// (/api/deadletters, /api/runs/{name}/results); the server's WriteTimeout
// cuts a slow reader off sooner.
const streamTimeout = 5 * time.Minute

// requestTimeout bounds the Redis reads of one JSON API request.
const requestTimeout = 10 * time.Second

// Options is what the admin endpoint serves.
type Options struct {
	Store   *tasks.Store
	Circuit CircuitReader
	// Queues are the served queue names (without priorities), searched by /api/status.
	Queues []string
	// Metrics serves /metrics; nil leaves it out.
	Metrics *Metrics
	// UI is the queue UI, mounted under /ui/; nil leaves it out.
	UI http.Handler
	// Token, when not empty, is required as "Authorization: Bearer TOKEN" on
	// everything but /healthz and /readyz.
	Token string
	// AllowedHosts are the names the endpoint answers to in the Host header
	// besides localhost and IP addresses (any port); "*" accepts any Host.
	// Other names get 421, except on /healthz and /readyz.
	AllowedHosts []string
	// Ready lists what keeps the worker from serving (nil or empty: ready).
	Ready  func(ctx context.Context) []string
	Logger *slog.Logger
	// Now is the clock for relative times in filters (tests); time.Now when nil.
	Now func() time.Time
}

// NewHandler returns the admin endpoint's handler.
func NewHandler(o Options) http.Handler {
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	a := &api{o: o}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(rw http.ResponseWriter, _ *http.Request) {
		writeJSON(rw, http.StatusOK, map[string]string{"status": "ok"})
	})
	mux.HandleFunc("GET /readyz", a.readyz)
	mux.HandleFunc("GET /{$}", a.index)
	if o.Metrics != nil {
		mux.Handle("GET /metrics", o.Metrics.Handler())
	}
	if o.UI != nil {
		mux.Handle("/ui/", sameOrigin(o.UI))
		mux.Handle("GET /ui", http.RedirectHandler("/ui/", http.StatusMovedPermanently))
	}
	if o.Store != nil {
		mux.HandleFunc("GET /api/status/{ref...}", a.status)
		mux.HandleFunc("GET /api/deadletters", a.deadLetters)
		mux.HandleFunc("GET /api/stats", a.stats)
		mux.HandleFunc("GET /api/accounts", a.accounts)
		mux.HandleFunc("GET /api/runs", a.runs)
		mux.HandleFunc("GET /api/runs/{name}", a.run)
		mux.HandleFunc("GET /api/runs/{name}/results", a.runResults)
		// A run name with an unescaped slash lands here: say how to ask.
		mux.HandleFunc("GET /api/runs/{rest...}", a.runPathHint)
	}
	if o.Circuit != nil {
		mux.HandleFunc("GET /api/circuit", a.circuit)
	}
	mux.HandleFunc("/", func(rw http.ResponseWriter, r *http.Request) {
		writeError(rw, http.StatusNotFound, "no such admin endpoint; GET / lists them")
	})
	var h http.Handler = mux
	if o.Token != "" {
		h = requireToken(o.Token, mux)
	}
	return checkHost(o.AllowedHosts, h)
}

// requireToken lets health checks through and asks everything else for the
// token. Only digests are compared, in constant time, so neither the token's
// bytes nor its length leak through timing. The queue UI also takes the token
// as an HTTP Basic password (any user name), because a browser cannot send a
// bearer token by itself but does prompt for Basic credentials.
func requireToken(token string, next http.Handler) http.Handler {
	want := sha256.Sum256([]byte(token))
	ok := func(got string) bool {
		sum := sha256.Sum256([]byte(got))
		return subtle.ConstantTimeCompare(sum[:], want[:]) == 1
	}
	return http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/healthz" || r.URL.Path == "/readyz" {
			next.ServeHTTP(rw, r)
			return
		}
		ui := r.URL.Path == "/ui" || strings.HasPrefix(r.URL.Path, "/ui/")
		scheme, cred, _ := strings.Cut(r.Header.Get("Authorization"), " ")
		switch {
		case strings.EqualFold(scheme, "Bearer") && ok(strings.TrimSpace(cred)):
			next.ServeHTTP(rw, r)
			return
		case ui && strings.EqualFold(scheme, "Basic"):
			if _, pass, found := strings.Cut(decodeBasic(cred), ":"); found && ok(pass) {
				next.ServeHTTP(rw, r)
				return
			}
		}
		challenge := `Bearer realm="orgsync admin"`
		if ui {
			challenge = `Basic realm="orgsync admin", charset="UTF-8"`
		}
		rw.Header().Set("WWW-Authenticate", challenge)
		writeError(rw, http.StatusUnauthorized, "missing or wrong admin token: send Authorization: Bearer TOKEN (the token in --admin-token-file)")
	})
}

// sameOrigin refuses state-changing requests that a browser sent from
// another site (a page posting to 127.0.0.1:9464/ui/api/...:run_all): with
// --admin-ui-writable those act, and a browser adds cached Basic credentials
// by itself. Requests without the browser headers (curl, scripts) pass.
func sameOrigin(next http.Handler) http.Handler {
	return http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		switch r.Method {
		case http.MethodGet, http.MethodHead, http.MethodOptions:
			next.ServeHTTP(rw, r)
			return
		}
		site := r.Header.Get("Sec-Fetch-Site")
		origin := r.Header.Get("Origin")
		cross := site != "" && site != "same-origin" && site != "none"
		if site == "" && origin != "" {
			u, err := url.Parse(origin)
			cross = err != nil || u.Host != r.Host
		}
		if cross {
			writeError(rw, http.StatusForbidden, "cross-origin request refused: use the queue UI from its own address")
			return
		}
		next.ServeHTTP(rw, r)
	})
}

func decodeBasic(cred string) string {
	b, err := base64.StdEncoding.DecodeString(strings.TrimSpace(cred))
	if err != nil {
		return ""
	}
	return string(b)
}

type api struct{ o Options }

func (a *api) index(rw http.ResponseWriter, _ *http.Request) {
	eps := []string{"/healthz", "/readyz"}
	if a.o.Metrics != nil {
		eps = append(eps, "/metrics")
	}
	if a.o.UI != nil {
		eps = append(eps, "/ui/")
	}
	if a.o.Store != nil {
		eps = append(eps, "/api/status/{task_id_or_key}", "/api/deadletters", "/api/stats", "/api/accounts",
			"/api/runs", "/api/runs/{name}", "/api/runs/{name}/results")
	}
	if a.o.Circuit != nil {
		eps = append(eps, "/api/circuit")
	}
	writeJSON(rw, http.StatusOK, map[string]any{"endpoints": eps})
}

func (a *api) readyz(rw http.ResponseWriter, r *http.Request) {
	var problems []string
	if a.o.Ready != nil {
		ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
		problems = a.o.Ready(ctx)
		cancel()
	}
	if len(problems) > 0 {
		writeJSON(rw, http.StatusServiceUnavailable, map[string]any{"status": "unready", "problems": problems})
		return
	}
	writeJSON(rw, http.StatusOK, map[string]string{"status": "ready"})
}

func (a *api) status(rw http.ResponseWriter, r *http.Request) {
	ref := r.PathValue("ref")
	if ref == "" {
		writeError(rw, http.StatusBadRequest, "say which update: /api/status/TASK_ID_OR_IDEMPOTENCY_KEY")
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), requestTimeout)
	defer cancel()
	st, err := a.o.Store.Operator().Status(ctx, ref, a.o.Queues)
	if errors.Is(err, tasks.ErrNotFound) {
		writeError(rw, http.StatusNotFound, fmt.Sprintf("no update with task id or idempotency key %q", ref))
		return
	}
	if err != nil {
		a.fail(rw, "status", err)
		return
	}
	writeJSON(rw, http.StatusOK, st)
}

// deadLetters streams the matching dead letters as NDJSON, oldest first, one
// tasks.DeadLetter per line: the same lines `enqueue dlq list` prints when
// piped, and no response has to hold up to 10,000 bodies of 1 MiB at once.
func (a *api) deadLetters(rw http.ResponseWriter, r *http.Request) {
	f, err := parseFilter(r.URL.Query(), a.o.Now())
	if err != nil {
		writeError(rw, http.StatusBadRequest, err.Error())
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), streamTimeout)
	defer cancel()
	rw.Header().Set("Content-Type", "application/x-ndjson")
	rw.Header().Set("X-Content-Type-Options", "nosniff")
	enc := json.NewEncoder(rw)
	n := 0
	err = a.o.Store.DeadLetters().Each(ctx, f, func(d tasks.DeadLetter) error {
		n++
		return enc.Encode(d)
	})
	if err != nil {
		if n == 0 {
			rw.Header().Set("Content-Type", "application/json")
			a.fail(rw, "dead letters", err)
			return
		}
		// The status line is gone: end the stream with an error line the
		// reader cannot mistake for a dead letter.
		a.o.Logger.Warn("admin: dead-letter listing cut short", "after", n, "error", err.Error())
		_ = enc.Encode(map[string]string{"error": "listing cut short: " + err.Error()})
	}
}

// parseFilter reads the query of /api/deadletters: account, org, status,
// class, since and until (RFC3339, or a duration ago such as 90m, 2h, 7d),
// limit (default 100, at most 10,000).
func parseFilter(q map[string][]string, now time.Time) (tasks.Filter, error) {
	get := func(k string) string {
		if v := q[k]; len(v) > 0 {
			return strings.TrimSpace(v[0])
		}
		return ""
	}
	for k := range q {
		switch k {
		case "account", "org", "status", "class", "since", "until", "limit":
		default:
			return tasks.Filter{}, fmt.Errorf("unknown parameter %q: expected account, org, status, class, since, until, limit", k)
		}
	}
	f := tasks.Filter{Account: get("account"), OrgID: get("org"), Class: tasks.Class(get("class")), Limit: DefaultListLimit}
	if s := get("status"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 100 || n > 599 {
			return f, fmt.Errorf("status=%q: expected an HTTP status code such as 422", s)
		}
		f.StatusCode = n
	}
	if s := get("limit"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > MaxListLimit {
			return f, fmt.Errorf("limit=%q: expected a whole number from 1 to %d", s, MaxListLimit)
		}
		f.Limit = n
	}
	var err error
	if f.Since, err = parseWhen("since", get("since"), now); err != nil {
		return f, err
	}
	if f.Until, err = parseWhen("until", get("until"), now); err != nil {
		return f, err
	}
	return f, nil
}

// parseWhen reads a since/until parameter (when.Parse), naming it in the error.
func parseWhen(name, s string, now time.Time) (time.Time, error) {
	t, err := when.Parse(s, now)
	if err != nil {
		return time.Time{}, fmt.Errorf("%s=%w", name, err)
	}
	return t, nil
}

func (a *api) stats(rw http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), requestTimeout)
	defer cancel()
	st, err := a.o.Store.Operator().Stats(ctx)
	if err != nil {
		a.fail(rw, "stats", err)
		return
	}
	writeJSON(rw, http.StatusOK, st)
}

func (a *api) accounts(rw http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), requestTimeout)
	defer cancel()
	holds, err := a.o.Store.Accounts().Holds(ctx)
	if err != nil {
		a.fail(rw, "account holds", err)
		return
	}
	if holds == nil {
		holds = []tasks.Hold{}
	}
	writeJSON(rw, http.StatusOK, map[string]any{"holds": holds})
}

func (a *api) circuit(rw http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), requestTimeout)
	defer cancel()
	st, err := a.o.Circuit.State(ctx)
	if err != nil {
		a.fail(rw, "circuit state", err)
		return
	}
	writeJSON(rw, http.StatusOK, st)
}

// fail answers 503 for a read that failed (Redis trouble, as a rule).
func (a *api) fail(rw http.ResponseWriter, what string, err error) {
	a.o.Logger.Warn("admin: read failed", "what", what, "error", err.Error())
	writeError(rw, http.StatusServiceUnavailable, fmt.Sprintf("reading %s failed: %v", what, err))
}

func writeJSON(rw http.ResponseWriter, code int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		code, b = http.StatusInternalServerError, []byte(`{"error":"could not encode the answer"}`)
	}
	rw.Header().Set("Content-Type", "application/json")
	rw.Header().Set("Cache-Control", "no-store")
	rw.WriteHeader(code)
	_, _ = rw.Write(append(b, '\n'))
}

func writeError(rw http.ResponseWriter, code int, msg string) {
	writeJSON(rw, code, map[string]string{"error": msg})
}
