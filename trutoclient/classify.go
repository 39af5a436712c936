package trutoclient

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"net/http"
	"strconv"
	"time"
)

// DefaultRateLimitDelay is how long an account waits after a 429 (or ratelimit-remaining 0) that
// did not say how long.
const DefaultRateLimitDelay = 10 * time.Second

// MinRateLimitDelay is the shortest wait a rate limit imposes, whatever the headers say: an answer
// that asks for less (an HTTP-date a few milliseconds ahead) would otherwise be re-sent at once.
const MinRateLimitDelay = time.Second

// Class is what the caller should do with an attempt's outcome: orgsync's failure policy in one type.
type Class int

const (
	// ClassSuccess: the update was applied; store the response.
	ClassSuccess Class = iota
	// ClassPermanent: retrying cannot help; dead-letter with the response.
	ClassPermanent
	// ClassRateLimited: the account waits Decision.Delay; no retry budget spent.
	ClassRateLimited
	// ClassAccountAttention: the account (or the token) needs an operator; park it.
	ClassAccountAttention
	// ClassTransient: nothing was applied or it is safe to assume so; retry with backoff.
	ClassTransient
	// ClassPossiblyApplied: the update may have been applied; retry with the same idempotency key.
	ClassPossiblyApplied
)

var classNames = [...]string{"success", "permanent", "rate_limited", "account_attention", "transient", "possibly_applied"}

// String returns the class's stable name, used in logs and metrics.
func (c Class) String() string {
	if c >= 0 && int(c) < len(classNames) {
		return classNames[c]
	}
	return "unknown"
}

// MaxReasonLen bounds Decision.Reason in bytes; a reason is one line of valid UTF-8. The longest
// in practice is a transport failure: its 52-byte prefix and a cause of up to maxCauseLen bytes.
const MaxReasonLen = 400

// maxCauseLen bounds the cause of a transport failure in a reason: enough for the longest usual
// ones whole (a TLS verification failure naming a certificate's hosts is about 150 bytes).
const maxCauseLen = 320

// Decision is Classify's verdict on one attempt.
type Decision struct {
	// Class is what to do.
	Class Class
	// Reason is short, human and stable enough to group by, e.g. "422 from provider: validation
	// failed"; one line of at most MaxReasonLen bytes.
	Reason string
	// Delay is how long the account must wait: set for ClassRateLimited, and for ClassSuccess when
	// ratelimit-remaining is 0.
	Delay time.Duration
	// StatusCode is the HTTP status, 0 when no response arrived.
	StatusCode int
	// TokenRejected says a ClassAccountAttention answer blames the API token
	// itself, not the account: every account would get the same answer.
	TokenRejected bool
}

// Classify maps the result of one UpdateOrganization attempt to the failure policy. It is the
// whole policy; keep it on one screen.
func Classify(resp *Response, err error) Decision {
	d := Decision{}
	if resp != nil {
		d.StatusCode = resp.StatusCode
	}
	var reqErr *RequestError
	var apiErr *APIError
	switch {
	case errors.As(err, &reqErr):
		return d.with(ClassPermanent, "invalid request: "+reqErr.Error())
	case errors.Is(err, context.Canceled):
		return d.with(ClassTransient, "canceled")
	case errors.Is(err, context.DeadlineExceeded):
		return d.with(ClassPossiblyApplied, "timeout: the update may have been applied")
	case errors.As(err, &apiErr):
		d.StatusCode = apiErr.StatusCode
	case err != nil && nothingSent(err):
		return d.with(ClassTransient, "connection failed before sending: "+cause(err))
	case err != nil:
		return d.with(ClassPossiblyApplied, "connection error, the update may have been applied: "+cause(err))
	case resp == nil:
		return d.with(ClassTransient, "no response")
	}

	code := d.StatusCode
	switch {
	case is2xx(code):
		d = d.with(ClassSuccess, statusText(code))
		if resp != nil && resp.Truncated {
			d.Reason += " (response body truncated)"
		}
		if resp != nil && resp.RateLimit.HasRemaining && resp.RateLimit.Remaining == 0 {
			d.Delay = rateLimitDelay(0, false, resp.RateLimit)
		}
		return d
	case code == http.StatusTooManyRequests:
		d = d.with(ClassRateLimited, apiReason(code, apiErr))
		var rl RateLimit
		if resp != nil {
			rl = resp.RateLimit
		}
		if apiErr != nil {
			d.Delay = rateLimitDelay(apiErr.RetryAfter, apiErr.HasRetryAfter, rl)
		} else {
			d.Delay = rateLimitDelay(0, false, rl)
		}
		return d
	case code == http.StatusUnauthorized && apiErr != nil && apiErr.IsRemoteError:
		return d.with(ClassAccountAttention, "provider rejected the account's credentials: the account needs re-authorization")
	case code == http.StatusUnauthorized:
		d.TokenRejected = true
		return d.with(ClassAccountAttention, "Truto rejected the API token: check TRUTO_API_TOKEN")
	case code == http.StatusServiceUnavailable && apiErr != nil && apiErr.IsTrutoBody:
		return d.with(ClassAccountAttention, "account blocked: "+apiReason(code, apiErr))
	case code == http.StatusBadGateway, code == http.StatusGatewayTimeout:
		return d.with(ClassPossiblyApplied, apiReason(code, apiErr)+" (the update may have been applied)")
	case code == http.StatusRequestTimeout, code == http.StatusTooEarly, code >= 500:
		return d.with(ClassTransient, apiReason(code, apiErr))
	case code >= 400:
		return d.with(ClassPermanent, apiReason(code, apiErr))
	default:
		return d.with(ClassPermanent, "unexpected status "+statusText(code))
	}
}

func (d Decision) with(c Class, reason string) Decision {
	d.Class, d.Reason = c, oneLine(reason, MaxReasonLen)
	return d
}

// cause is a transport failure's root cause without the request it names, so that reasons group
// by what went wrong (the path carries the organization's id), on one line and bounded.
func cause(err error) string {
	var te *TransportError
	if errors.As(err, &te) {
		return oneLine(te.Cause(), maxCauseLen)
	}
	return oneLine(err.Error(), maxCauseLen)
}

// apiReason is "422 from provider: <message>", or "503 Service Unavailable" without a Truto body.
func apiReason(code int, e *APIError) string {
	if e == nil || !e.IsTrutoBody {
		return statusText(code)
	}
	from := "Truto"
	if e.IsRemoteError {
		from = "provider"
	}
	r := strconv.Itoa(code) + " from " + from
	if msg := oneLine(e.Message, 120); msg != "" {
		r += ": " + msg
	}
	return r
}

// nothingSent reports errors that prove the request never left: dialing or resolving failed, or
// the TLS handshake did (the request is only sent over an established connection).
func nothingSent(err error) bool {
	var dnsErr *net.DNSError
	var certErr *tls.CertificateVerificationError
	var recErr tls.RecordHeaderError
	if errors.As(err, &dnsErr) || errors.As(err, &certErr) || errors.As(err, &recErr) {
		return true
	}
	var opErr *net.OpError
	return errors.As(err, &opErr) && opErr.Op == "dial"
}
