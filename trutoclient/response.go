package trutoclient

import (
	"encoding/json"
	"io"
	"math"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// MaxRetryAfter caps a delay read from Retry-After or ratelimit-reset, so that a hostile or broken
// header cannot park an account for years.
const MaxRetryAfter = 24 * time.Hour

// Organization is Truto's unified organization object. Every field but ID may be missing.
type Organization struct {
	ID          string          `json:"id"`
	Name        string          `json:"name,omitempty"`
	PricingPlan string          `json:"pricing_plan,omitempty"`
	Licenses    []License       `json:"licenses,omitempty"`
	CreatedAt   string          `json:"created_at,omitempty"`
	UpdatedAt   string          `json:"updated_at,omitempty"`
	RemoteData  json.RawMessage `json:"remote_data,omitempty"`
}

// License is one license of an Organization.
type License struct {
	ID   string `json:"id,omitempty"`
	Name string `json:"name,omitempty"`
}

// Response is what came back from one attempt, whatever the status.
type Response struct {
	// StatusCode is the HTTP status.
	StatusCode int
	// Header holds only the headers that matter (rate limits, Retry-After, Content-Type, request ids).
	Header http.Header
	// Body is the raw body: up to the response limit for 2xx, up to the error limit otherwise.
	Body []byte
	// Truncated reports that the body was longer than its limit and Body holds only its start.
	// A truncated 2xx is still a success: the update was applied.
	Truncated bool
	// RateLimit is parsed from the normalized ratelimit-* headers.
	RateLimit RateLimit
	// Latency runs from sending the request to reading the body.
	Latency time.Duration
}

// RateLimit is Truto's normalized rate-limit headers, present only when the provider gives them.
type RateLimit struct {
	// Limit is ratelimit-limit as sent, e.g. "110;w=10".
	Limit string
	// Remaining is ratelimit-remaining, valid when HasRemaining.
	Remaining    int
	HasRemaining bool
	// Reset is ratelimit-reset (time until the window reopens), valid when HasReset. A reset of 0
	// says nothing about how long to wait and counts as absent.
	Reset    time.Duration
	HasReset bool
}

// keptHeaders are the response headers a Response keeps; anything ending in -Request-Id is kept too.
var keptHeaders = map[string]bool{
	"Retry-After":         true,
	"Ratelimit-Limit":     true,
	"Ratelimit-Remaining": true,
	"Ratelimit-Reset":     true,
	"Content-Type":        true,
	"X-Request-Id":        true,
	"X-Truto-Request-Id":  true,
	"Cf-Ray":              true,
	// Idempotent-Replayed: true marks an answer served from an idempotency cache
	// (Stripe's convention, which Truto's guides describe).
	"Idempotent-Replayed": true,
}

func filterHeader(h http.Header) http.Header {
	out := make(http.Header)
	for k, v := range h {
		ck := http.CanonicalHeaderKey(k)
		if keptHeaders[ck] || strings.HasSuffix(ck, "-Request-Id") {
			out[ck] = append([]string(nil), v...)
		}
	}
	return out
}

// readResponse reads at most limit+1 bytes of the body (limit = maxResponseBody for a 2xx,
// maxErrorBody otherwise) into one buffer, so a body's memory is bounded by its limit whatever the
// upstream sends. A body longer than the limit is cut to it and flagged Truncated; of the rest, up
// to discardLimit bytes are read into io.Discard so that a slightly long answer still leaves the
// connection reusable, and closing the body drops the connection past that. It always returns a
// Response; the error is a read failure.
func readResponse(hr *http.Response, maxErrorBody, maxResponseBody int64) (*Response, error) {
	defer hr.Body.Close()
	resp := &Response{
		StatusCode: hr.StatusCode,
		Header:     filterHeader(hr.Header),
		RateLimit:  parseRateLimit(hr.Header),
	}
	limit := maxErrorBody
	if is2xx(hr.StatusCode) {
		limit = maxResponseBody
	}
	body, truncated, err := readBounded(hr.Body, hr.ContentLength, limit)
	resp.Body, resp.Truncated = body, truncated
	if err != nil {
		return resp, err
	}
	if truncated {
		_, _ = io.CopyN(io.Discard, hr.Body, discardLimit)
	}
	return resp, nil
}

// readBufferStart is the first buffer size for a body of unknown length.
const readBufferStart = 4 << 10

// readBounded reads r until EOF or until it has seen limit+1 bytes, the one extra byte telling a
// body of exactly limit bytes from a longer one. The buffer is sized from Content-Length when the
// upstream sent one (capped at limit+1) and otherwise grows by doubling up to limit+1, so it never
// exceeds limit+1 bytes and the bytes are copied into it once (a growing buffer also copies what it
// holds, at most limit bytes in all). The returned slice is cut to limit.
func readBounded(r io.Reader, contentLength, limit int64) (body []byte, truncated bool, err error) {
	want := limit + 1
	size := int64(readBufferStart)
	if contentLength >= 0 {
		size = contentLength + 1 // +1: EOF arrives with no byte to spare
	}
	buf := make([]byte, 0, min(size, want))
	for int64(len(buf)) < want {
		if len(buf) == cap(buf) {
			grown := make([]byte, len(buf), min(2*int64(cap(buf))+readBufferStart, want))
			copy(grown, buf)
			buf = grown
		}
		n, rerr := r.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		switch {
		case int64(len(buf)) == want:
			// The extra byte arrived, whatever came with it.
		case rerr == io.EOF:
			return buf, false, nil
		case rerr != nil:
			return buf, false, rerr
		}
	}
	return buf[:limit:limit], true, nil
}

func parseRateLimit(h http.Header) RateLimit {
	var rl RateLimit
	rl.Limit = h.Get("Ratelimit-Limit")
	if n, ok := parseSeconds(h.Get("Ratelimit-Remaining")); ok && n <= math.MaxInt32 {
		rl.Remaining, rl.HasRemaining = int(n), true
	}
	if n, ok := parseSeconds(h.Get("Ratelimit-Reset")); ok && n > 0 {
		rl.Reset, rl.HasReset = secondsToDuration(n), true
	}
	return rl
}

// parseSeconds reads a non-negative integer, ignoring parameters after ';' or ',' (the draft
// RateLimit header syntax allows them).
func parseSeconds(v string) (int64, bool) {
	if i := strings.IndexAny(v, ";,"); i >= 0 {
		v = v[:i]
	}
	v = strings.TrimSpace(v)
	if v == "" {
		return 0, false
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil {
		if ne, ok := err.(*strconv.NumError); ok && ne.Err == strconv.ErrRange && v[0] != '-' {
			return math.MaxInt64, true
		}
		return 0, false
	}
	if n < 0 {
		return 0, false
	}
	return n, true
}

func secondsToDuration(n int64) time.Duration {
	if n >= int64(MaxRetryAfter/time.Second) {
		return MaxRetryAfter
	}
	return time.Duration(n) * time.Second
}

// parseRetryAfter reads Retry-After as delay-seconds or an HTTP-date relative to now. A value that
// asks for no wait (0, or a date that is not in the future) counts as absent: taken literally it
// would have the same update re-sent at once, again and again, for as long as the 429s last.
func parseRetryAfter(v string, now time.Time) (time.Duration, bool) {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0, false
	}
	if n, ok := parseSeconds(v); ok && !strings.ContainsAny(v, ";,") {
		if n == 0 {
			return 0, false
		}
		return secondsToDuration(n), true
	}
	t, err := http.ParseTime(v)
	if err != nil {
		return 0, false
	}
	d := t.Sub(now)
	switch {
	case d <= 0:
		return 0, false
	case d > MaxRetryAfter:
		return MaxRetryAfter, true
	}
	return d, true
}

// rateLimitDelay is how long to wait on a rate limit: the first usable hint (Retry-After, then
// ratelimit-reset), else DefaultRateLimitDelay, and never less than MinRateLimitDelay.
func rateLimitDelay(retryAfter time.Duration, hasRetryAfter bool, rl RateLimit) time.Duration {
	d := DefaultRateLimitDelay
	switch {
	case hasRetryAfter:
		d = retryAfter
	case rl.HasReset:
		d = rl.Reset
	}
	return max(d, MinRateLimitDelay)
}
