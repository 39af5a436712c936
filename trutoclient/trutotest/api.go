package trutotest

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"
)

const (
	orgPath      = "/unified/user-directory/organizations/"
	maxBodyBytes = 4 << 20 // far above the 1 MiB the design allows, so the client's own limit is what tests see
)

// ServeHTTP serves Truto's organization API and, under /_fake/, the control API.
func (f *Fake) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	path := r.URL.EscapedPath()
	if path == "/_fake" || strings.HasPrefix(path, "/_fake/") {
		f.serveControl(w, r, path)
		return
	}
	rec := RecordedRequest{
		Time:           f.now(),
		Method:         r.Method,
		RawPath:        path,
		RawQuery:       r.URL.RawQuery,
		Header:         redact(r.Header),
		IdempotencyKey: r.Header.Get("Idempotency-Key"),
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, maxBodyBytes+1))
	rec.Body = body
	ans := f.serveAPI(r, &rec, err)
	f.finish(&rec, ans)
	if ans.abort {
		abort(w)
		return
	}
	h := w.Header()
	for k, v := range ans.header {
		h[k] = v
	}
	w.WriteHeader(ans.status)
	_, _ = w.Write(ans.body)
}

// finish counts a request once its answer is decided and before it is sent, so a client
// that has its answer always finds its request in the counts.
func (f *Fake) finish(rec *RecordedRequest, ans answer) {
	if !ans.abort {
		rec.Status, rec.Answer = ans.status, ans.body
		if len(ans.header) > 0 {
			rec.AnswerHeader = ans.header.Clone()
		}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if rec.Method == http.MethodPatch {
		f.stats.Requests++
		f.stats.ByStatus[rec.Status]++
		if rec.Status == http.StatusTooManyRequests {
			f.stats.RateLimited++
		}
		if rec.IdempotencyKey == "" {
			f.stats.Unkeyed++
		} else {
			f.keyStateLocked(rec.IdempotencyKey).Requests++
		}
	}
	f.recordLocked(*rec)
}

func (f *Fake) keyStateLocked(key string) *keyState {
	ks := f.keys[key]
	if ks == nil {
		ks = &keyState{}
		f.keys[key] = ks
	}
	return ks
}

// abort drops the connection without an answer, as a crashed proxy would.
func abort(w http.ResponseWriter) {
	conn, _, err := http.NewResponseController(w).Hijack()
	if err != nil {
		// HTTP/2 cannot hijack; net/http resets the stream on this sentinel panic.
		panic(http.ErrAbortHandler)
	}
	if tc, ok := conn.(*net.TCPConn); ok {
		_ = tc.SetLinger(0) // send RST, not FIN: a reset, not a clean close
	}
	_ = conn.Close()
}

// orgID finds the organization id in an escaped path ending in orgPath+{id}; ok is false
// for any other path.
func orgID(escapedPath string) (id string, ok bool, err error) {
	i := strings.LastIndex(escapedPath, orgPath)
	if i < 0 {
		return "", false, nil
	}
	seg := escapedPath[i+len(orgPath):]
	if seg == "" || strings.Contains(seg, "/") {
		return "", false, nil
	}
	id, err = url.PathUnescape(seg)
	return id, true, err
}

// respOptions are the query parameters that shape the answer.
type respOptions struct {
	format       string
	ignoreRemote bool
	exclude      []string
}

// parseQuery checks the query the way Truto would and extracts what the fake uses.
func parseQuery(raw string) (account string, o respOptions, err error) {
	q, err := url.ParseQuery(raw)
	if err != nil {
		return "", o, fmt.Errorf("malformed query: %w", err)
	}
	switch vs := q["integrated_account_id"]; {
	case len(vs) == 0 || vs[0] == "":
		return "", o, errors.New("integrated_account_id is required")
	case len(vs) > 1:
		return "", o, errors.New("integrated_account_id must be given once")
	default:
		account = vs[0]
	}
	o.format = q.Get("truto_response_format")
	switch o.format {
	case "", "unified", "normalized", "raw", "stream":
	default:
		return "", o, fmt.Errorf("truto_response_format %q: want unified, raw, normalized or stream", o.format)
	}
	if v := q.Get("truto_ignore_remote_data"); v != "" {
		if o.ignoreRemote, err = strconv.ParseBool(v); err != nil {
			return "", o, fmt.Errorf("truto_ignore_remote_data %q: want true or false", v)
		}
	}
	for k, vs := range q {
		if k == "truto_exclude_fields[]" || isIndexed(k, "truto_exclude_fields") {
			o.exclude = append(o.exclude, vs...)
		}
	}
	return account, o, nil
}

// isIndexed reports whether k is name[N], the indexed array form the TS SDK sends.
func isIndexed(k, name string) bool {
	rest, ok := strings.CutPrefix(k, name+"[")
	if !ok {
		return false
	}
	n, ok := strings.CutSuffix(rest, "]")
	_, err := strconv.Atoi(n)
	return ok && n != "" && err == nil
}

// serveAPI decides the answer to one request to Truto's API, in Truto's order of checks.
func (f *Fake) serveAPI(r *http.Request, rec *RecordedRequest, readErr error) answer {
	if !f.authorized(r) {
		return trutoError(http.StatusUnauthorized, "Invalid or missing API token.")
	}
	id, ok, err := orgID(rec.RawPath)
	if !ok {
		return trutoError(http.StatusNotFound, "No such route: "+rec.RawPath)
	}
	if err != nil {
		return trutoError(http.StatusBadRequest, "Malformed organization id in the path.")
	}
	rec.OrgID = id
	if r.Method != http.MethodPatch && r.Method != http.MethodGet {
		a := trutoError(http.StatusMethodNotAllowed, "Method "+r.Method+" is not allowed here.")
		a.header.Set("Allow", "GET, PATCH")
		return a
	}
	if !f.wait(r.Context(), f.latency()) {
		return answer{abort: true}
	}
	if a, stop := f.outage(r.Context()); stop {
		return a
	}
	account, opts, err := parseQuery(rec.RawQuery)
	rec.Account = account
	if err != nil {
		return trutoError(http.StatusBadRequest, err.Error())
	}
	var patch map[string]any
	if r.Method == http.MethodPatch {
		if readErr != nil {
			return trutoError(http.StatusBadRequest, "Could not read the request body.")
		}
		if len(rec.Body) > maxBodyBytes {
			return trutoError(http.StatusRequestEntityTooLarge, "The request body is too large.")
		}
		if patch, err = decodeObject(rec.Body); err != nil {
			return trutoError(http.StatusBadRequest, "The request body must be a JSON object: "+err.Error())
		}
	}
	f.mu.Lock()
	fl := f.faults
	f.mu.Unlock()
	if s, ok := fl.AccountStatus[account]; ok {
		return forcedError(s)
	}
	if s, ok := fl.OrgStatus[id]; ok {
		return forcedError(s)
	}
	if r.Method == http.MethodGet {
		return f.get(account, id, opts)
	}
	return f.patch(rec, account, id, patch, opts)
}

// decodeObject decodes exactly one JSON object, keeping numbers as written.
func decodeObject(b []byte) (map[string]any, error) {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return nil, err
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, errors.New("unexpected data after the object")
	}
	m, ok := v.(map[string]any)
	if !ok {
		return nil, errors.New("not an object")
	}
	return m, nil
}

// latency draws this request's delay.
func (f *Fake) latency() time.Duration {
	f.mu.Lock()
	defer f.mu.Unlock()
	d := time.Duration(f.faults.Latency)
	if j := f.faults.LatencyJitter; j > 0 {
		d += time.Duration(f.rng.Int64N(int64(j) + 1))
	}
	return d
}

// wait sleeps for d unless ctx ends first (false); Shutdown cuts it short (true).
func (f *Fake) wait(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-f.done:
		return true
	case <-ctx.Done():
		return false
	}
}

// outage applies the current outage; stop says whether a is the answer. A hang waits until
// the outage ends (then the request goes on), the request's context ends or Shutdown.
func (f *Fake) outage(ctx context.Context) (a answer, stop bool) {
	for {
		f.mu.Lock()
		o, changed, now := f.faults.Outage, f.faultsChanged, f.now()
		f.mu.Unlock()
		if !o.activeAt(now) {
			return answer{}, false
		}
		switch o.Mode {
		case OutageReset:
			return answer{abort: true}, true
		case OutageHang:
		default:
			return proxy503(), true
		}
		if !f.hang(ctx, changed, o.Until.Sub(now), o.Until.IsZero()) {
			return answer{abort: true}, true
		}
	}
}

// hang blocks until the faults change, the outage's remaining time left passes (unless
// forever), ctx ends or Shutdown; it reports whether the request may go on.
func (f *Fake) hang(ctx context.Context, changed <-chan struct{}, left time.Duration, forever bool) bool {
	f.mu.Lock()
	f.hung++
	f.mu.Unlock()
	defer func() {
		f.mu.Lock()
		f.hung--
		f.mu.Unlock()
	}()
	var expire <-chan time.Time
	if !forever {
		t := time.NewTimer(left)
		defer t.Stop()
		expire = t.C
	}
	select {
	case <-ctx.Done():
		return false
	case <-f.done:
		return false
	case <-changed:
	case <-expire:
	}
	return true
}

// get answers the stored organization.
func (f *Fake) get(account, id string, opts respOptions) answer {
	f.mu.Lock()
	defer f.mu.Unlock()
	o := f.orgs[orgKey{account, id}]
	if o == nil {
		return remoteError(http.StatusNotFound, "Organization not found.", map[string]any{"error": "not_found"}, nil)
	}
	return render(o.fields, opts)
}

// patch runs the rate limits, injected errors, idempotency and the update itself.
func (f *Fake) patch(rec *RecordedRequest, account, id string, p map[string]any, opts respOptions) answer {
	f.mu.Lock()
	now := f.now()
	fl := f.faults
	if a, limited := f.admitLocked(now, account, fl); limited {
		f.mu.Unlock()
		return a
	}
	s := f.drawLocked(fl.ErrorRates)
	f.mu.Unlock()
	if s != 0 {
		return injectedError(s)
	}

	key := rec.IdempotencyKey
	if key != "" {
		// Serialize per key so two concurrent requests with one key never both apply.
		defer f.lockKey(key)()
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	fl = f.faults
	var ks *keyState
	fp := fingerprint(account, id, rec.Body)
	if key != "" {
		ks = f.keyStateLocked(key)
		if ks.cached && !fl.IgnoreIdempotency {
			if ks.fingerprint != fp {
				f.stats.KeyConflicts++
				return trutoError(http.StatusUnprocessableEntity,
					"Idempotency-Key was already used with a different request.")
			}
			f.stats.Replays++
			a := answer{status: http.StatusOK, body: ks.answer,
				header: http.Header{"Content-Type": {ks.contentType}, "Idempotent-Replayed": {"true"}}}
			f.rateHeadersLocked(a.header, now, account, fl)
			return a
		}
	}
	fields := f.applyLocked(now, account, id, p, rec.Body, key)
	f.stats.Effects++
	if ks != nil {
		if ks.Effects > 0 {
			f.stats.DuplicateEffects++
		}
		ks.Effects++
	}
	a := render(fields, opts)
	if ks != nil && !ks.cached {
		ks.cached, ks.fingerprint, ks.answer, ks.contentType = true, fp, a.body, a.header.Get("Content-Type")
	}
	if s := f.drawLocked(fl.AfterApplyRates); s != 0 {
		return injectedError(s)
	}
	f.rateHeadersLocked(a.header, now, account, fl)
	return a
}

// fingerprint identifies a request for idempotency: the same key must come with the same
// organization and body (whitespace aside).
func fingerprint(account, id string, body []byte) [32]byte {
	var c bytes.Buffer
	if json.Compact(&c, body) != nil {
		c.Reset()
		c.Write(body)
	}
	h := sha256.New()
	for _, s := range []string{account, id} {
		h.Write([]byte(strconv.Itoa(len(s)) + ":" + s))
	}
	h.Write(c.Bytes())
	return [32]byte(h.Sum(nil))
}

// drawLocked picks at most one status from rates; 0 means none. Nothing is drawn for an
// empty map, so adding rates does not shift other random choices.
func (f *Fake) drawLocked(rates map[int]float64) int {
	if len(rates) == 0 {
		return 0
	}
	codes := make([]int, 0, len(rates))
	for c := range rates {
		codes = append(codes, c)
	}
	slices.Sort(codes) // map order is random; the draw must be reproducible
	x, cum := f.rng.Float64(), 0.0
	for _, c := range codes {
		cum += rates[c]
		if x < cum {
			return c
		}
	}
	return 0
}

// ceilSeconds rounds d up to whole seconds, at least 1 when d > 0.
func ceilSeconds(d time.Duration) int {
	if d <= 0 {
		return 0
	}
	return int(math.Ceil(d.Seconds()))
}
