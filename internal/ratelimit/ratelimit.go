// Package ratelimit names Truto's request limits (per integrated account and
// per API token) and reads them from configuration. Admission
// (internal/admission) keeps them, spacing requests evenly, one every
// Window/Requests, which keeps any sliding window of Truto's under its limit;
// a headroom fraction (default 5 %) absorbs network jitter between the moment
// a slot is taken and the moment Truto counts the request.
package ratelimit

import (
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Limit is Requests per Window. A zero Limit means no limit.
type Limit struct {
	Requests int
	Window   time.Duration
}

// Defaults: Truto's documented limits.
var (
	DefaultAccountLimit = Limit{Requests: 50, Window: 10 * time.Second}
	DefaultTokenLimit   = Limit{Requests: 500, Window: 10 * time.Second}
)

// DefaultHeadroom is the fraction of each limit left unused.
const DefaultHeadroom = 0.05

// IsZero reports whether l means "no limit".
func (l Limit) IsZero() bool { return l.Requests <= 0 || l.Window <= 0 }

// String renders l as the flag form N/window ("0" for none).
func (l Limit) String() string {
	if l.IsZero() {
		return "0"
	}
	return strconv.Itoa(l.Requests) + "/" + l.Window.String()
}

// Parse reads the flag form: "50/10s", "5/1s", or "0" for no limit.
func Parse(s string) (Limit, error) {
	s = strings.TrimSpace(s)
	if s == "0" {
		return Limit{}, nil
	}
	n, w, ok := strings.Cut(s, "/")
	reqs, err1 := strconv.Atoi(n)
	win, err2 := time.ParseDuration(w)
	if !ok || err1 != nil || err2 != nil || reqs < 1 || win <= 0 {
		return Limit{}, fmt.Errorf("%q: expected N/window such as 50/10s, or 0 for no limit", s)
	}
	return Limit{Requests: reqs, Window: win}, nil
}
