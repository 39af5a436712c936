package trutoclient

import (
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"strings"
	"syscall"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/google/go-cmp/cmp"
)

// errView is the part of an error a caller relies on, for comparison.
type errView struct {
	StatusCode     int
	ErrorText      string
	Message        string
	IsRemoteError  bool
	IsTrutoBody    bool
	RawResponse    string
	ErrorInsight   string
	RetryAfter     time.Duration
	HasRetryAfter  bool
	BodyLen        int
	RateLimited    bool
	RateLimitDelay time.Duration
}

func TestErrorBodies(t *testing.T) {
	t.Parallel()
	now := time.Date(2015, 10, 21, 7, 27, 30, 0, time.UTC)
	huge := strings.Repeat("x", 10<<20)
	tests := []struct {
		name   string
		status int
		header map[string]string
		body   string
		want   errView
	}{
		{
			name: "truto json", status: 422,
			body: `{"statusCode":422,"error":"Unprocessable Entity","message":"name is required"}`,
			want: errView{StatusCode: 422, ErrorText: "Unprocessable Entity", Message: "name is required", IsTrutoBody: true},
		},
		{
			name: "remote error, raw_response string, empty message", status: 422,
			body: `{"statusCode":422,"error":"Unprocessable Entity","message":"","truto_is_remote_error":true,"raw_response":"validation failed: name"}`,
			want: errView{StatusCode: 422, ErrorText: "Unprocessable Entity", Message: "validation failed: name", IsRemoteError: true,
				IsTrutoBody: true, RawResponse: `"validation failed: name"`},
		},
		{
			name: "remote error, raw_response object, no message", status: 409,
			body: `{"statusCode":409,"error":"Conflict","truto_is_remote_error":true,"raw_response":{"errors": [{"field":"name"}]}}`,
			want: errView{StatusCode: 409, ErrorText: "Conflict", Message: `{"errors":[{"field":"name"}]}`, IsRemoteError: true,
				IsTrutoBody: true, RawResponse: `{"errors": [{"field":"name"}]}`},
		},
		{
			name: "message wins over raw_response", status: 400,
			body: `{"statusCode":400,"error":"Bad Request","message":"bad","truto_is_remote_error":true,"raw_response":"ignored"}`,
			want: errView{StatusCode: 400, ErrorText: "Bad Request", Message: "bad", IsRemoteError: true, IsTrutoBody: true, RawResponse: `"ignored"`},
		},
		{
			name: "error insight", status: 400,
			body: `{"statusCode":400,"error":"Bad Request","message":"missing fields","truto_error_insight":{"missing_required_body_fields":["name"]}}`,
			want: errView{StatusCode: 400, ErrorText: "Bad Request", Message: "missing fields", IsTrutoBody: true,
				ErrorInsight: `{"missing_required_body_fields":["name"]}`},
		},
		{
			name: "html from a proxy", status: 503, header: map[string]string{"Content-Type": "text/html"},
			body: "<html><body><h1>503 Service Temporarily Unavailable</h1></body></html>",
			want: errView{StatusCode: 503, BodyLen: 70},
		},
		{
			name: "json without truto's shape", status: 503, body: `{"detail":"maintenance"}`,
			want: errView{StatusCode: 503},
		},
		{
			name: "empty body", status: 500,
			want: errView{StatusCode: 500},
		},
		{
			name: "10 MiB body", status: 500, body: huge,
			want: errView{StatusCode: 500, BodyLen: DefaultMaxErrorBody},
		},
		{
			name: "retry-after seconds", status: 429, header: map[string]string{"Retry-After": "7", "Ratelimit-Reset": "3"},
			body: `{"statusCode":429,"error":"Too Many Requests","message":"slow down"}`,
			want: errView{StatusCode: 429, ErrorText: "Too Many Requests", Message: "slow down", IsTrutoBody: true,
				RetryAfter: 7 * time.Second, HasRetryAfter: true, RateLimited: true, RateLimitDelay: 7 * time.Second},
		},
		{
			name: "retry-after http-date", status: 429, header: map[string]string{"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"},
			want: errView{StatusCode: 429, RetryAfter: 30 * time.Second, HasRetryAfter: true, RateLimited: true, RateLimitDelay: 30 * time.Second},
		},
		{
			name: "retry-after in the past", status: 429, header: map[string]string{"Retry-After": "Wed, 21 Oct 2015 07:00:00 GMT"},
			want: errView{StatusCode: 429, RateLimited: true, RateLimitDelay: DefaultRateLimitDelay},
		},
		{
			name: "ratelimit-reset fallback", status: 429, header: map[string]string{"Ratelimit-Reset": "4", "Ratelimit-Remaining": "0"},
			want: errView{StatusCode: 429, RetryAfter: 4 * time.Second, HasRetryAfter: true, RateLimited: true, RateLimitDelay: 4 * time.Second},
		},
		{
			name: "garbage retry-after falls back", status: 429, header: map[string]string{"Retry-After": "soon", "Ratelimit-Reset": "5"},
			want: errView{StatusCode: 429, RetryAfter: 5 * time.Second, HasRetryAfter: true, RateLimited: true, RateLimitDelay: 5 * time.Second},
		},
		{
			name: "no hint at all", status: 429,
			want: errView{StatusCode: 429, RateLimited: true, RateLimitDelay: DefaultRateLimitDelay},
		},
		{
			name: "absurd retry-after is capped", status: 429, header: map[string]string{"Retry-After": "99999999999999999999999"},
			want: errView{StatusCode: 429, RetryAfter: MaxRetryAfter, HasRetryAfter: true, RateLimited: true, RateLimitDelay: MaxRetryAfter},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			rec := newRecorder(t, answer(tt.status, tt.header, tt.body))
			c := newTestClient(t, rec.srv.URL)
			c.now = func() time.Time { return now }
			org, resp, err := c.UpdateOrganization(testContext(t), validRequest())
			if org != nil || resp == nil {
				t.Fatalf("org = %v, resp = %v; want nil org and a response", org, resp)
			}
			var apiErr *APIError
			if !errors.As(err, &apiErr) {
				t.Fatalf("error = %v, want an *APIError", err)
			}
			got := errView{
				StatusCode: apiErr.StatusCode, ErrorText: apiErr.ErrorText, Message: apiErr.Message,
				IsRemoteError: apiErr.IsRemoteError, IsTrutoBody: apiErr.IsTrutoBody, RawResponse: string(apiErr.RawResponse),
				ErrorInsight: string(apiErr.ErrorInsight), RetryAfter: apiErr.RetryAfter, HasRetryAfter: apiErr.HasRetryAfter,
			}
			if tt.want.BodyLen > 0 {
				got.BodyLen = len(apiErr.Body)
			}
			var rl *RateLimitError
			if errors.As(err, &rl) {
				got.RateLimited, got.RateLimitDelay = true, rl.RetryAfter
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("error (-want +got):\n%s", diff)
			}
			if apiErr.Response != resp || string(resp.Body) != string(apiErr.Body) {
				t.Errorf("APIError.Response/Body do not match the returned response")
			}
			if apiErr.Path != "/unified/user-directory/organizations/org-1" || apiErr.Method != "PATCH" {
				t.Errorf("APIError names %s %s", apiErr.Method, apiErr.Path)
			}
		})
	}
}

func TestAPIErrorString(t *testing.T) {
	t.Parallel()
	const p = "/unified/user-directory/organizations/x"
	tests := []struct {
		name string
		err  *APIError
		want string
	}{
		{"message", &APIError{Method: "PATCH", Path: p, StatusCode: 422, IsTrutoBody: true, Message: "validation failed"},
			"PATCH " + p + ": 422 Unprocessable Entity: validation failed"},
		{"no message", &APIError{Method: "PATCH", Path: p, StatusCode: 500, IsTrutoBody: true},
			"PATCH " + p + ": 500 Internal Server Error"},
		{"html", &APIError{Method: "PATCH", Path: p, StatusCode: 503, Body: []byte("<html>\n <b>down</b>\n</html>")},
			"PATCH " + p + ": 503 Service Unavailable: non-JSON body: <html> <b>down</b> </html>"},
		{"unknown status", &APIError{Method: "PATCH", Path: p, StatusCode: 599, ErrorText: "Weird", IsTrutoBody: true},
			"PATCH " + p + ": 599 Weird"},
		{"multi-line message", &APIError{Method: "PATCH", Path: p, StatusCode: 400, IsTrutoBody: true, Message: "a\r\n\tb\x00c"},
			"PATCH " + p + ": 400 Bad Request: a b c"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if got := tt.err.Error(); got != tt.want {
				t.Errorf("Error() = %q, want %q", got, tt.want)
			}
		})
	}

	long := &APIError{Method: "PATCH", Path: p, StatusCode: 422, IsTrutoBody: true, Message: strings.Repeat("ü", 10000)}
	if got := long.Error(); len(got) > len("PATCH "+p+": 422 Unprocessable Entity: ")+maxErrorMessageLen || !utf8.ValidString(got) {
		t.Errorf("Error() of a long message is %d bytes (valid UTF-8: %v), want at most %d", len(got), utf8.ValidString(got), maxErrorMessageLen)
	}
}

func TestParseRetryAfter(t *testing.T) {
	t.Parallel()
	now := time.Date(2015, 10, 21, 7, 28, 0, 0, time.UTC)
	tests := []struct {
		in     string
		want   time.Duration
		wantOK bool
	}{
		{"", 0, false},
		{"0", 0, false},
		{"00", 0, false},
		{"10", 10 * time.Second, true},
		{" 10 ", 10 * time.Second, true},
		{"-1", 0, false},
		{"1.5", 0, false},
		{"10;w=1", 0, false},
		{"Wed, 21 Oct 2015 07:28:10 GMT", 10 * time.Second, true},
		{"Wednesday, 21-Oct-15 07:28:10 GMT", 10 * time.Second, true},
		{"Wed, 21 Oct 2015 07:00:00 GMT", 0, false},
		{"Wed, 21 Oct 2015 07:28:00 GMT", 0, false},
		{"Wed, 21 Oct 2115 07:00:00 GMT", MaxRetryAfter, true},
		{"9223372036854775807", MaxRetryAfter, true},
		{"tomorrow", 0, false},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			t.Parallel()
			got, ok := parseRetryAfter(tt.in, now)
			if got != tt.want || ok != tt.wantOK {
				t.Errorf("parseRetryAfter(%q) = %v, %v; want %v, %v", tt.in, got, ok, tt.want, tt.wantOK)
			}
		})
	}
}

func TestParseRateLimit(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		h    http.Header
		want RateLimit
	}{
		{"none", http.Header{}, RateLimit{}},
		{"all", http.Header{"Ratelimit-Limit": {"110;w=10"}, "Ratelimit-Remaining": {"5"}, "Ratelimit-Reset": {"8"}},
			RateLimit{Limit: "110;w=10", Remaining: 5, HasRemaining: true, Reset: 8 * time.Second, HasReset: true}},
		{"parameters", http.Header{"Ratelimit-Remaining": {"0;w=10"}, "Ratelimit-Reset": {" 3 "}},
			RateLimit{HasRemaining: true, Reset: 3 * time.Second, HasReset: true}},
		{"garbage", http.Header{"Ratelimit-Remaining": {"many"}, "Ratelimit-Reset": {"-4"}}, RateLimit{}},
		{"reset 0 is no reset", http.Header{"Ratelimit-Remaining": {"0"}, "Ratelimit-Reset": {"0"}},
			RateLimit{HasRemaining: true}},
		{"huge", http.Header{"Ratelimit-Remaining": {"99999999999999"}, "Ratelimit-Reset": {"99999999999999"}},
			RateLimit{Reset: MaxRetryAfter, HasReset: true}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if diff := cmp.Diff(tt.want, parseRateLimit(tt.h)); diff != "" {
				t.Errorf("parseRateLimit (-want +got):\n%s", diff)
			}
		})
	}
}

// fuzzToken holds characters that escape or decode (/, %41), so that its decoded readings are
// searched too.
const fuzzToken = "tk/Fz%41-9"

func FuzzParseErrorBody(f *testing.F) {
	for _, seed := range []string{
		``, `{}`, `null`, `[]`, `<html>`, `{"statusCode":422}`, `{"error":{"nested":true}}`,
		`{"statusCode":422,"error":"Unprocessable Entity","message":"","truto_is_remote_error":true,"raw_response":"x"}`,
		`{"message":null,"raw_response":{"a":[1,2,{"b":"\u00fc"}]},"truto_error_insight":{"rate_limit_error":true}}`,
		`{"message":"\ud800","raw_response":"\xff\xfe"}`, `{"truto_is_remote_error":"yes"}`,
		strings.Repeat(`{"a":`, 20000), `{"message":"` + strings.Repeat(`\u00fc`, 5000) + `"}`,
		`{"message":"tk\/Fz%41-9"}`, `{"raw_response":"{\"message\":\"\\u0074k/Fz%41-9\"}"}`,
		`{"message":"&#116;k&sol;Fz%2541-9"}`, `<p>tk%2FFz%2541-9</p>`,
	} {
		f.Add([]byte(seed), 422)
	}
	red := newRedactor(fuzzToken)
	f.Fuzz(func(t *testing.T, body []byte, status int) {
		eb := parseErrorBody(body)
		if len(eb.ErrorText) > maxTextLen || len(eb.Message) > maxTextLen {
			t.Fatalf("text fields of %d and %d bytes exceed %d", len(eb.ErrorText), len(eb.Message), maxTextLen)
		}
		if len(eb.RawResponse) > len(body) || len(eb.ErrorInsight) > len(body) {
			t.Fatalf("raw fields larger than the body")
		}
		if eb.RawResponse != nil && !json.Valid(eb.RawResponse) {
			t.Fatalf("raw_response %q is not valid JSON", eb.RawResponse)
		}
		resp := &Response{StatusCode: status, Header: http.Header{}, Body: red.Bytes(body, false)}
		err := newError("PATCH", "/p", resp, time.Unix(0, 0), red)
		if n := len(err.Error()); n > 400 {
			t.Fatalf("Error() is %d bytes, want a bounded line", n)
		}
		d := Classify(resp, err)
		var apiErr *APIError
		if !errors.As(err, &apiErr) {
			t.Fatalf("newError returned %T, want an *APIError inside", err)
		}
		for _, s := range []string{err.Error(), d.Reason, apiErr.ErrorText, apiErr.Message,
			string(apiErr.RawResponse), string(apiErr.ErrorInsight), string(apiErr.Body)} {
			if strings.Contains(s, fuzzToken) {
				t.Fatalf("the token survives redaction in %q", s)
			}
		}
	})
}

// TestTransportError: a failure below HTTP names the request once, without the URL's host or
// query, then the root cause, unredacted of nothing but the token; the cause stays reachable with
// errors.As, and Classify's reason keeps it whole.
func TestTransportError(t *testing.T) {
	t.Parallel()
	const path = "/unified/user-directory/organizations/org-1"
	failing := func(err error) Option {
		return WithHTTPClient(&http.Client{Transport: roundTripFunc(func(*http.Request) (*http.Response, error) { return nil, err })})
	}
	longCause := errors.New("x509: certificate is valid for " + strings.Repeat("a-long-host-name.example.com, ", 40) + "not api.truto.one")
	tests := []struct {
		name       string
		setup      func(t *testing.T) (base string, opts []Option)
		wantError  string // with ADDR for the server's address
		wantReason string
		wantCause  func(error) bool
	}{
		{
			name: "unknown certificate authority",
			setup: func(t *testing.T) (string, []Option) {
				srv := httptest.NewTLSServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}))
				srv.Config.ErrorLog = log.New(io.Discard, "", 0)
				t.Cleanup(srv.Close)
				return srv.URL, nil
			},
			wantError:  "PATCH " + path + ": tls: failed to verify certificate: x509: certificate signed by unknown authority",
			wantReason: "connection failed before sending: tls: failed to verify certificate: x509: certificate signed by unknown authority",
			wantCause: func(err error) bool {
				var ua x509.UnknownAuthorityError
				return errors.As(err, &ua)
			},
		},
		{
			name:       "connection refused",
			setup:      func(t *testing.T) (string, []Option) { return closedURL(t), nil },
			wantError:  "PATCH " + path + ": dial tcp ADDR: connect: connection refused",
			wantReason: "connection failed before sending: dial tcp ADDR: connect: connection refused",
			wantCause:  func(err error) bool { return errors.Is(err, syscall.ECONNREFUSED) },
		},
		{
			name: "body cut short",
			setup: func(t *testing.T) (string, []Option) {
				return cutShortServer(t), nil
			},
			wantError:  "PATCH " + path + ": reading the 200 response body: unexpected EOF",
			wantReason: "connection error, the update may have been applied: unexpected EOF",
			wantCause:  func(err error) bool { return errors.Is(err, io.ErrUnexpectedEOF) },
		},
		{
			name: "cause echoing the token",
			setup: func(_ *testing.T) (string, []Option) {
				return "https://truto.invalid", []Option{failing(fmt.Errorf("proxy refused Authorization: Bearer %s (%s): %w",
					testToken, uEscape(testToken, false), io.ErrClosedPipe))}
			},
			wantError:  "PATCH " + path + ": proxy refused Authorization: Bearer [redacted] ([redacted]): io: read/write on closed pipe",
			wantReason: "connection error, the update may have been applied: proxy refused Authorization: Bearer [redacted] ([redacted]): io: read/write on closed pipe",
			wantCause:  func(err error) bool { return errors.Is(err, io.ErrClosedPipe) },
		},
		{
			name:       "long cause",
			setup:      func(_ *testing.T) (string, []Option) { return "https://truto.invalid", []Option{failing(longCause)} },
			wantError:  "PATCH " + path + ": " + longCause.Error(),
			wantReason: "connection error, the update may have been applied: " + oneLine(longCause.Error(), maxCauseLen),
			wantCause:  func(err error) bool { return errors.Is(err, longCause) },
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			base, opts := tt.setup(t)
			c := newTestClient(t, base, opts...)
			_, resp, err := c.UpdateOrganization(testContext(t), validRequest())
			var te *TransportError
			if !errors.As(err, &te) {
				t.Fatalf("error = %v (%T), want a *TransportError", err, err)
			}
			addr := strings.TrimPrefix(strings.TrimPrefix(base, "http://"), "https://")
			type view struct {
				Error, Reason   string
				Cause, Unwraps  bool
				PathOnce, NoURL bool
			}
			d := Classify(resp, err)
			got := view{
				Error: strings.ReplaceAll(err.Error(), addr, "ADDR"), Reason: strings.ReplaceAll(d.Reason, addr, "ADDR"),
				Cause: tt.wantCause(err), Unwraps: errors.Unwrap(err) == te.Err && te.Err != nil,
				PathOnce: strings.Count(err.Error(), path) == 1,
				NoURL:    !strings.Contains(err.Error(), "://") && !strings.Contains(err.Error(), "integrated_account_id"),
			}
			want := view{Error: tt.wantError, Reason: tt.wantReason, Cause: true, Unwraps: true, PathOnce: true, NoURL: true}
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("transport error (-want +got):\n%s", diff)
			}
			if len(d.Reason) > MaxReasonLen {
				t.Errorf("reason is %d bytes, over MaxReasonLen %d", len(d.Reason), MaxReasonLen)
			}
		})
	}
}
