package admin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	"github.com/orgsync/orgsync/tasks"
)

// The runs of the JSON API: GET /api/runs lists them, GET /api/runs/{name}
// is one run with its dead letters counted, GET /api/runs/{name}/results
// streams its lines. A run's name is one path segment: a name with a slash
// or a space is path-escaped (url.PathEscape), "crm%2F2026%20nov".

// runs answers the runs kept (tasks.Runs.List), oldest first, as a JSON
// array: [] when there is none.
func (a *api) runs(rw http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), requestTimeout)
	defer cancel()
	runs, err := a.o.Store.Runs().List(ctx)
	if err != nil {
		a.fail(rw, "runs", err)
		return
	}
	if runs == nil {
		runs = []tasks.RunStatus{}
	}
	writeJSON(rw, http.StatusOK, runs)
}

// runDetail is one run's status with its dead letters by status and class,
// present (as {}) even when the run has none.
type runDetail struct {
	tasks.RunStatus
	DeadByStatus map[string]int `json:"dead_by_status"`
	DeadByClass  map[string]int `json:"dead_by_class"`
}

func (a *api) run(rw http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	ctx, cancel := context.WithTimeout(r.Context(), requestTimeout)
	defer cancel()
	st, err := a.o.Store.Runs().Get(ctx, name)
	if errors.Is(err, tasks.ErrNotFound) {
		a.noRun(rw, name)
		return
	}
	if err != nil {
		a.fail(rw, "run", err)
		return
	}
	if err := a.o.Store.Runs().DeadLetters(ctx, &st); err != nil {
		a.fail(rw, "the run's dead letters", err)
		return
	}
	writeJSON(rw, http.StatusOK, runDetail{RunStatus: st, DeadByStatus: st.DeadByStatus, DeadByClass: st.DeadByClass})
}

func (a *api) noRun(rw http.ResponseWriter, name string) {
	writeError(rw, http.StatusNotFound, fmt.Sprintf("no run named %q (runs are kept as long as results; GET /api/runs lists them)", name))
}

// errEnough stops a results listing at its limit.
var errEnough = errors.New("limit reached")

// runResults streams a run's lines in line order as NDJSON, one
// tasks.RunResult per line, each written and flushed as it is read: the
// store reads a page of lines per round trip, so neither side holds the run.
func (a *api) runResults(rw http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	f, limit, err := parseResultQuery(r.URL.Query())
	if err != nil {
		writeError(rw, http.StatusBadRequest, err.Error())
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), streamTimeout)
	defer cancel()
	flusher := http.NewResponseController(rw)
	enc := json.NewEncoder(rw)
	n := 0
	err = a.o.Store.Runs().EachResult(ctx, name, f, func(res tasks.RunResult) error {
		if n == 0 {
			rw.Header().Set("Content-Type", "application/x-ndjson")
			rw.Header().Set("X-Content-Type-Options", "nosniff")
			rw.Header().Set("Cache-Control", "no-store")
		}
		n++
		if err := enc.Encode(res); err != nil {
			return err
		}
		_ = flusher.Flush() // a filter that matches rarely still shows each line as it is found
		if n >= limit {
			return errEnough
		}
		return nil
	})
	switch {
	case err == nil || errors.Is(err, errEnough):
		if n == 0 {
			// Known run, no line matched: an empty NDJSON answer.
			rw.Header().Set("Content-Type", "application/x-ndjson")
			rw.Header().Set("Cache-Control", "no-store")
			rw.WriteHeader(http.StatusOK)
		}
	case n == 0 && errors.Is(err, tasks.ErrNotFound):
		a.noRun(rw, name)
	case n == 0:
		a.fail(rw, "the run's results", err)
	default:
		// The status line is gone: end the stream with an error line the
		// reader cannot mistake for a result.
		a.o.Logger.Warn("admin: run results cut short", "run", name, "after", n, "error", err.Error())
		_ = enc.Encode(map[string]string{"error": "listing cut short: " + err.Error()})
	}
}

// parseResultQuery reads the query of /api/runs/{name}/results: state, status
// (HTTP code), limit (default DefaultResultsLimit, at most MaxResultsLimit).
func parseResultQuery(q url.Values) (tasks.ResultFilter, int, error) {
	for k := range q {
		switch k {
		case "state", "status", "limit":
		default:
			return tasks.ResultFilter{}, 0, fmt.Errorf("unknown parameter %q: expected state, status, limit", k)
		}
	}
	f := tasks.ResultFilter{State: tasks.State(strings.TrimSpace(q.Get("state")))}
	if _, ok := tasks.ParseRunResultState(string(f.State)); f.State != "" && !ok {
		return f, 0, fmt.Errorf("state=%q: expected one of %s", f.State, tasks.Join(tasks.RunResultStates))
	}
	if s := strings.TrimSpace(q.Get("status")); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 100 || n > 599 {
			return f, 0, fmt.Errorf("status=%q: expected an HTTP status code such as 422", s)
		}
		f.StatusCode = n
	}
	limit := DefaultResultsLimit
	if s := strings.TrimSpace(q.Get("limit")); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > MaxResultsLimit {
			return f, 0, fmt.Errorf("limit=%q: expected a whole number from 1 to %d", s, MaxResultsLimit)
		}
		limit = n
	}
	return f, limit, nil
}

// runPathHint answers a path under /api/runs/ that is not one run: most
// likely a run name with a slash that was not escaped.
func (a *api) runPathHint(rw http.ResponseWriter, r *http.Request) {
	rest := r.PathValue("rest")
	if rest == "" {
		writeError(rw, http.StatusNotFound, "say which run: /api/runs/NAME (GET /api/runs lists them)")
		return
	}
	writeError(rw, http.StatusNotFound, fmt.Sprintf(
		"no such run endpoint: a run's name is one path segment; escape a slash in it as %%2F (/api/runs/%s)", url.PathEscape(rest)))
}
