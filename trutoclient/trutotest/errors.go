package trutotest

import (
	"encoding/json"
	"net/http"
)

// answer is what the fake decided to send; abort means drop the connection instead.
type answer struct {
	status int
	header http.Header
	body   []byte
	abort  bool
}

// trutoBody is Truto's error shape; the remote fields are set only for provider-side errors.
type trutoBody struct {
	StatusCode   int    `json:"statusCode"`
	Error        string `json:"error"`
	Message      string `json:"message"`
	Remote       bool   `json:"truto_is_remote_error,omitempty"`
	RawResponse  any    `json:"raw_response,omitempty"`
	ErrorInsight any    `json:"truto_error_insight,omitempty"`
}

// jsonAnswer answers status with v as JSON.
func jsonAnswer(status int, v any) answer {
	b, err := json.Marshal(v)
	if err != nil {
		// Only values built by the fake reach here; a failure is a bug in the fake.
		return answer{status: http.StatusInternalServerError, body: []byte(`{"statusCode":500,"error":"Internal Server Error","message":"fake: cannot encode the answer"}`)}
	}
	return answer{status: status, header: http.Header{"Content-Type": {"application/json"}}, body: b}
}

// trutoError is an error Truto itself answers (not the provider).
func trutoError(status int, msg string) answer {
	return jsonAnswer(status, trutoBody{StatusCode: status, Error: http.StatusText(status), Message: msg})
}

// remoteError is an error the provider answered, relayed by Truto.
func remoteError(status int, msg string, raw, insight any) answer {
	return jsonAnswer(status, trutoBody{StatusCode: status, Error: http.StatusText(status), Message: msg,
		Remote: true, RawResponse: raw, ErrorInsight: insight})
}

// proxy503 is what a load balancer in front of Truto answers during an outage: not Truto JSON.
func proxy503() answer {
	return answer{
		status: http.StatusServiceUnavailable,
		header: http.Header{"Content-Type": {"text/html; charset=utf-8"}},
		body:   []byte("<html><head><title>503 Service Temporarily Unavailable</title></head><body><center><h1>503 Service Temporarily Unavailable</h1></center></body></html>\n"),
	}
}

// forcedError is the answer for a status forced through AccountStatus or OrgStatus.
func forcedError(status int) answer {
	switch status {
	case http.StatusUnauthorized:
		return remoteError(status, "The integrated account's credentials were rejected; it needs to be reconnected (needs_reauth).",
			map[string]any{"error": "invalid_grant", "error_description": "Token has been expired or revoked."}, nil)
	case http.StatusForbidden:
		return remoteError(status, "The provider refused the request: missing scopes.",
			map[string]any{"error": "insufficient_scope"},
			map[string]any{"forbidden_error": map[string]any{"missing_scopes": []string{"organization.write"}}})
	case http.StatusNotFound:
		return remoteError(status, "Organization not found.", map[string]any{"error": "not_found"}, nil)
	case http.StatusConflict:
		return remoteError(status, "The provider reported a conflict.", map[string]any{"error": "conflict"}, nil)
	case http.StatusUnprocessableEntity:
		return remoteError(status, "The provider rejected the data.",
			map[string]any{"errors": []any{map[string]any{"field": "name", "message": "is required"}}},
			map[string]any{"missing_required_body_fields": []string{"name"}})
	case http.StatusTooManyRequests:
		a := remoteError(status, "The provider rate limited the request.", "Too Many Requests",
			map[string]any{"rate_limit_error": true})
		a.header.Set("Retry-After", "1")
		return a
	case http.StatusServiceUnavailable:
		return trutoError(status, "The integrated account is blocked.")
	default:
		return trutoError(status, "fake: forced status")
	}
}

// injectedError is the answer for a status drawn from ErrorRates or AfterApplyRates. A 503
// is the proxy's HTML page (a transient outage), not Truto's "account blocked" JSON; use
// AccountStatus for that.
func injectedError(status int) answer {
	switch status {
	case http.StatusServiceUnavailable:
		return proxy503()
	case http.StatusTooManyRequests:
		a := trutoError(status, "fake: injected rate limit")
		a.header.Set("Retry-After", "1")
		return a
	default:
		return trutoError(status, "fake: injected error")
	}
}
