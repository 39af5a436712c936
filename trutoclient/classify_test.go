package trutoclient

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// outcome builds what UpdateOrganization returns for a response with this status, headers and body.
func outcome(status int, header http.Header, body string) (*Response, error) {
	if header == nil {
		header = http.Header{}
	}
	resp := &Response{StatusCode: status, Header: filterHeader(header), Body: []byte(body), RateLimit: parseRateLimit(header)}
	if is2xx(status) {
		return resp, nil
	}
	return resp, newError(http.MethodPatch, "/unified/user-directory/organizations/x", resp, time.Unix(0, 0), nil)
}

func truto(status int, message string, remote bool) string {
	return fmt.Sprintf(`{"statusCode":%d,"error":%q,"message":%q,"truto_is_remote_error":%t}`,
		status, http.StatusText(status), message, remote)
}

func TestClassify(t *testing.T) {
	t.Parallel()
	dialErr := &net.OpError{Op: "dial", Net: "tcp", Err: &os.SyscallError{Syscall: "connect", Err: syscall.ECONNREFUSED}}
	resetErr := &net.OpError{Op: "read", Net: "tcp", Err: &os.SyscallError{Syscall: "read", Err: syscall.ECONNRESET}}
	type row struct {
		name string
		resp *Response
		err  error
		want Decision
	}
	rows := []row{}
	add := func(name string, want Decision, status int, header http.Header, body string) {
		resp, err := outcome(status, header, body)
		want.StatusCode = status
		rows = append(rows, row{name, resp, err, want})
	}
	add("200", Decision{Class: ClassSuccess, Reason: "200 OK"}, 200, nil, `{"id":"x"}`)
	add("204", Decision{Class: ClassSuccess, Reason: "204 No Content"}, 204, nil, ``)
	add("200, remaining 0, reset 5", Decision{Class: ClassSuccess, Reason: "200 OK", Delay: 5 * time.Second}, 200,
		http.Header{"Ratelimit-Remaining": {"0"}, "Ratelimit-Reset": {"5"}}, `{}`)
	add("200, remaining 0, no reset", Decision{Class: ClassSuccess, Reason: "200 OK", Delay: DefaultRateLimitDelay}, 200,
		http.Header{"Ratelimit-Remaining": {"0"}}, `{}`)
	add("200, remaining 3", Decision{Class: ClassSuccess, Reason: "200 OK"}, 200,
		http.Header{"Ratelimit-Remaining": {"3"}, "Ratelimit-Reset": {"5"}}, `{}`)
	add("429 retry-after", Decision{Class: ClassRateLimited, Reason: "429 from Truto: slow down", Delay: 7 * time.Second}, 429,
		http.Header{"Retry-After": {"7"}, "Ratelimit-Reset": {"2"}}, truto(429, "slow down", false))
	add("429 provider, reset only", Decision{Class: ClassRateLimited, Reason: "429 from provider: quota", Delay: 2 * time.Second}, 429,
		http.Header{"Ratelimit-Reset": {"2"}}, truto(429, "quota", true))
	add("429 no hint", Decision{Class: ClassRateLimited, Reason: "429 Too Many Requests", Delay: DefaultRateLimitDelay}, 429, nil, ``)
	add("non-429 with remaining 0 is not a rate limit", Decision{Class: ClassTransient, Reason: "500 from Truto: boom"}, 500,
		http.Header{"Ratelimit-Remaining": {"0"}}, truto(500, "boom", false))
	add("401 remote", Decision{Class: ClassAccountAttention,
		Reason: "provider rejected the account's credentials: the account needs re-authorization"}, 401, nil, truto(401, "expired", true))
	add("401 truto", Decision{Class: ClassAccountAttention, Reason: "Truto rejected the API token: check TRUTO_API_TOKEN", TokenRejected: true},
		401, nil, truto(401, "bad token", false))
	add("503 truto body", Decision{Class: ClassAccountAttention, Reason: "account blocked: 503 from Truto: account is blocked"},
		503, nil, truto(503, "account is blocked", false))
	add("503 html", Decision{Class: ClassTransient, Reason: "503 Service Unavailable"}, 503, nil, `<html>down</html>`)
	add("503 empty", Decision{Class: ClassTransient, Reason: "503 Service Unavailable"}, 503, nil, ``)
	add("502", Decision{Class: ClassPossiblyApplied, Reason: "502 from Truto: upstream (the update may have been applied)"},
		502, nil, truto(502, "upstream", false))
	add("504 html", Decision{Class: ClassPossiblyApplied, Reason: "504 Gateway Timeout (the update may have been applied)"},
		504, nil, `<html/>`)
	for _, code := range []int{408, 425, 500, 501, 507, 599} {
		add(fmt.Sprint(code), Decision{Class: ClassTransient, Reason: statusText(code)}, code, nil, ``)
	}
	for _, code := range []int{400, 403, 404, 405, 409, 413, 418, 422, 451} {
		add(fmt.Sprint(code), Decision{Class: ClassPermanent, Reason: fmt.Sprintf("%d from provider: refused", code)},
			code, nil, truto(code, "refused", true))
	}
	add("301", Decision{Class: ClassPermanent, Reason: "unexpected status 301 Moved Permanently"}, 301, nil, ``)
	add("304", Decision{Class: ClassPermanent, Reason: "unexpected status 304 Not Modified"}, 304, nil, ``)
	add("101", Decision{Class: ClassPermanent, Reason: "unexpected status 101 Switching Protocols"}, 101, nil, ``)

	big, _ := outcome(200, nil, `{"id":`)
	rows = append(rows,
		row{"invalid request", nil, &RequestError{Field: "id", Reason: "is empty"},
			Decision{Class: ClassPermanent, Reason: "invalid request: invalid id: is empty"}},
		row{"canceled", nil, fmt.Errorf("truto: PATCH /x: %w", context.Canceled), Decision{Class: ClassTransient, Reason: "canceled"}},
		row{"deadline", nil, fmt.Errorf("truto: PATCH /x: %w", context.DeadlineExceeded),
			Decision{Class: ClassPossiblyApplied, Reason: "timeout: the update may have been applied"}},
		row{"deadline while reading a 200", big, fmt.Errorf("truto: %w", context.DeadlineExceeded),
			Decision{Class: ClassPossiblyApplied, Reason: "timeout: the update may have been applied", StatusCode: 200}},
		row{"dial refused", nil, fmt.Errorf("truto: %w", dialErr),
			Decision{Class: ClassTransient, Reason: "connection failed before sending: truto: dial tcp: connect: connection refused"}},
		row{"dns", nil, fmt.Errorf("truto: %w", &net.DNSError{Err: "no such host", Name: "api.truto.invalid", IsNotFound: true}),
			Decision{Class: ClassTransient, Reason: "connection failed before sending: truto: lookup api.truto.invalid: no such host"}},
		row{"reset", nil, fmt.Errorf("truto: %w", resetErr),
			Decision{Class: ClassPossiblyApplied, Reason: "connection error, the update may have been applied: truto: read tcp: read: connection reset by peer"}},
		row{"eof", nil, fmt.Errorf("truto: %w", io.EOF),
			Decision{Class: ClassPossiblyApplied, Reason: "connection error, the update may have been applied: truto: EOF"}},
		row{"truncated 200", &Response{StatusCode: 200, Body: []byte(`{"id":`), Truncated: true}, nil,
			Decision{Class: ClassSuccess, Reason: "200 OK (response body truncated)", StatusCode: 200}},
		row{"nothing at all", nil, nil, Decision{Class: ClassTransient, Reason: "no response"}},
	)
	for _, tt := range rows {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if diff := cmp.Diff(tt.want, Classify(tt.resp, tt.err)); diff != "" {
				t.Errorf("Classify (-want +got):\n%s", diff)
			}
		})
	}
}

// TestRateLimitWait: a hint of no wait (Retry-After 0 or a past date, ratelimit-reset 0) counts as
// absent, so the next hint or the default applies, and no wait is shorter than MinRateLimitDelay.
func TestRateLimitWait(t *testing.T) {
	t.Parallel()
	now := time.Date(2015, 10, 21, 7, 28, 0, 700*int(time.Millisecond), time.UTC)
	tests := []struct {
		name   string
		status int
		header http.Header
		want   time.Duration
	}{
		{"retry-after 7", 429, http.Header{"Retry-After": {"7"}}, 7 * time.Second},
		{"retry-after 0", 429, http.Header{"Retry-After": {"0"}}, DefaultRateLimitDelay},
		{"retry-after 0 falls back to reset", 429, http.Header{"Retry-After": {"0"}, "Ratelimit-Reset": {"4"}}, 4 * time.Second},
		{"past date", 429, http.Header{"Retry-After": {"Wed, 21 Oct 2015 07:00:00 GMT"}}, DefaultRateLimitDelay},
		{"date of now", 429, http.Header{"Retry-After": {"Wed, 21 Oct 2015 07:28:00 GMT"}}, DefaultRateLimitDelay},
		{"past date falls back to reset", 429,
			http.Header{"Retry-After": {"Wed, 21 Oct 2015 07:00:00 GMT"}, "Ratelimit-Reset": {"3"}}, 3 * time.Second},
		{"date 300ms ahead is floored", 429, http.Header{"Retry-After": {"Wed, 21 Oct 2015 07:28:01 GMT"}}, MinRateLimitDelay},
		{"date 5s ahead", 429, http.Header{"Retry-After": {"Wed, 21 Oct 2015 07:28:06 GMT"}}, 5300 * time.Millisecond},
		{"reset 0", 429, http.Header{"Ratelimit-Reset": {"0"}}, DefaultRateLimitDelay},
		{"retry-after and reset 0", 429, http.Header{"Retry-After": {"0"}, "Ratelimit-Reset": {"0"}}, DefaultRateLimitDelay},
		{"negative", 429, http.Header{"Retry-After": {"-5"}}, DefaultRateLimitDelay},
		{"200, remaining 0, reset 0", 200, http.Header{"Ratelimit-Remaining": {"0"}, "Ratelimit-Reset": {"0"}}, DefaultRateLimitDelay},
		{"200, remaining 0, reset 2", 200, http.Header{"Ratelimit-Remaining": {"0"}, "Ratelimit-Reset": {"2"}}, 2 * time.Second},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			resp := &Response{StatusCode: tt.status, Header: filterHeader(tt.header), RateLimit: parseRateLimit(tt.header)}
			var err error
			if !is2xx(tt.status) {
				err = newError(http.MethodPatch, "/p", resp, now, nil)
			}
			got := struct{ Delay, RetryAfter time.Duration }{Delay: Classify(resp, err).Delay}
			want := struct{ Delay, RetryAfter time.Duration }{Delay: tt.want}
			var rle *RateLimitError
			if errors.As(err, &rle) {
				got.RetryAfter, want.RetryAfter = rle.RetryAfter, tt.want
			}
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("waits (-want +got):\n%s", diff)
			}
		})
	}
}

func TestClassString(t *testing.T) {
	t.Parallel()
	got := []string{}
	for c := ClassSuccess; c <= ClassPossiblyApplied+1; c++ {
		got = append(got, c.String())
	}
	want := []string{"success", "permanent", "rate_limited", "account_attention", "transient", "possibly_applied", "unknown"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("Class.String (-want +got):\n%s", diff)
	}
}

// TestClassifyNetwork drives real failures through UpdateOrganization.
func TestClassifyNetwork(t *testing.T) {
	t.Parallel()
	hang := func(t *testing.T, received chan<- struct{}) string {
		t.Helper()
		release := make(chan struct{})
		rec := newRecorder(t, func(_ http.ResponseWriter, r *http.Request) {
			if received != nil {
				received <- struct{}{}
			}
			select {
			case <-r.Context().Done():
			case <-release:
			}
		})
		t.Cleanup(func() { close(release) })
		return rec.srv.URL
	}
	// hijack reads the request fully, then drops the connection without answering.
	hijack := func(t *testing.T, reset bool) string {
		t.Helper()
		rec := newRecorder(t, func(w http.ResponseWriter, _ *http.Request) {
			conn, _, err := w.(http.Hijacker).Hijack()
			if err != nil {
				return
			}
			if tcp, ok := conn.(*net.TCPConn); ok && reset {
				_ = tcp.SetLinger(0) // close with RST instead of FIN
			}
			_ = conn.Close()
		})
		return rec.srv.URL
	}
	tests := []struct {
		name      string
		run       func(t *testing.T) (*Response, error)
		wantClass Class
		check     func(error) bool
	}{
		{"timeout", func(t *testing.T) (*Response, error) {
			c := newTestClient(t, hang(t, nil), WithTimeout(50*time.Millisecond))
			_, resp, err := c.UpdateOrganization(testContext(t), validRequest())
			return resp, err
		}, ClassPossiblyApplied, func(err error) bool { return errors.Is(err, context.DeadlineExceeded) }},
		{"caller canceled", func(t *testing.T) (*Response, error) {
			received := make(chan struct{}, 1)
			c := newTestClient(t, hang(t, received))
			ctx, cancel := context.WithCancel(testContext(t))
			go func() { <-received; cancel() }()
			_, resp, err := c.UpdateOrganization(ctx, validRequest())
			return resp, err
		}, ClassTransient, func(err error) bool { return errors.Is(err, context.Canceled) }},
		{"connection reset", func(t *testing.T) (*Response, error) {
			c := newTestClient(t, hijack(t, true))
			_, resp, err := c.UpdateOrganization(testContext(t), validRequest())
			return resp, err
		}, ClassPossiblyApplied, func(err error) bool { return err != nil }},
		{"connection closed", func(t *testing.T) (*Response, error) {
			c := newTestClient(t, hijack(t, false))
			_, resp, err := c.UpdateOrganization(testContext(t), validRequest())
			return resp, err
		}, ClassPossiblyApplied, func(err error) bool { return err != nil }},
		{"connection refused", func(t *testing.T) (*Response, error) {
			c := newTestClient(t, closedURL(t))
			_, resp, err := c.UpdateOrganization(testContext(t), validRequest())
			return resp, err
		}, ClassTransient, func(err error) bool {
			var op *net.OpError
			return errors.As(err, &op) && op.Op == "dial" && errors.Is(err, syscall.ECONNREFUSED)
		}},
		{"body cut short", func(t *testing.T) (*Response, error) {
			c := newTestClient(t, cutShortServer(t))
			_, resp, err := c.UpdateOrganization(testContext(t), validRequest())
			if resp == nil || resp.StatusCode != 200 || string(resp.Body) != `{"id":` {
				t.Errorf("partial response = %+v, want the 200 and the bytes that arrived", resp)
			}
			return resp, err
		}, ClassPossiblyApplied, func(err error) bool { return errors.Is(err, io.ErrUnexpectedEOF) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			resp, err := tt.run(t)
			if !tt.check(err) {
				t.Errorf("error = %v (%T), not the expected kind", err, errors.Unwrap(err))
			}
			if d := Classify(resp, err); d.Class != tt.wantClass {
				t.Errorf("Classify = %+v, want class %s", d, tt.wantClass)
			}
		})
	}
}

// cutShortServer answers 200 with a Content-Length it does not keep, then
// closes the connection: a body cut short. It returns the server's URL.
func cutShortServer(t *testing.T) string {
	t.Helper()
	rec := newRecorder(t, func(w http.ResponseWriter, _ *http.Request) {
		conn, buf, err := w.(http.Hijacker).Hijack()
		if err != nil {
			return
		}
		defer conn.Close()
		_, _ = buf.WriteString("HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{\"id\":")
		_ = buf.Flush()
	})
	return rec.srv.URL
}
