package trutotest

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"strconv"
	"time"
)

// Outage modes understood by Faults.Outage.Mode.
const (
	OutageNone  = ""      // no outage
	Outage503   = "503"   // a proxy in front of Truto answers a short HTML 503 page
	OutageReset = "reset" // the connection is closed without an answer
	OutageHang  = "hang"  // the request blocks until its context ends or the outage ends
)

// defaultWindow is the window used to count admitted requests when a Limit has none,
// so AdmittedPerWindow stays meaningful with rate limiting switched off.
const defaultWindow = 10 * time.Second

// Duration is a time.Duration that reads and writes JSON as a Go duration string ("10s");
// a JSON number is read as nanoseconds.
type Duration time.Duration

// String formats d as a Go duration.
func (d Duration) String() string { return time.Duration(d).String() }

// MarshalJSON writes d as a Go duration string.
func (d Duration) MarshalJSON() ([]byte, error) {
	return json.Marshal(time.Duration(d).String())
}

// UnmarshalJSON reads a Go duration string or a number of nanoseconds.
func (d *Duration) UnmarshalJSON(b []byte) error {
	b = bytes.TrimSpace(b)
	if len(b) > 0 && b[0] == '"' {
		var s string
		if err := json.Unmarshal(b, &s); err != nil {
			return fmt.Errorf("duration: %w", err)
		}
		v, err := time.ParseDuration(s)
		if err != nil {
			return fmt.Errorf("duration %q: want a Go duration such as \"10s\": %w", s, err)
		}
		*d = Duration(v)
		return nil
	}
	n, err := strconv.ParseInt(string(b), 10, 64)
	if err != nil {
		return fmt.Errorf("duration %s: want a Go duration string or whole nanoseconds: %w", b, err)
	}
	*d = Duration(n)
	return nil
}

// Limit is a sliding-window rate limit: at most Requests admitted in any Window.
// Requests 0 means unlimited.
type Limit struct {
	Requests int      `json:"requests"`
	Window   Duration `json:"window"`
}

// active reports whether l restricts anything.
func (l Limit) active() bool { return l.Requests > 0 }

// span is the window admitted requests are counted over.
func (l Limit) span() time.Duration {
	if l.Window > 0 {
		return time.Duration(l.Window)
	}
	return defaultWindow
}

// Outage describes an upstream outage: Mode is one of the Outage* constants, and the outage
// lasts until Until (the zero time means until it is ended).
type Outage struct {
	Mode  string    `json:"mode"`
	Until time.Time `json:"until,omitzero"`
}

// activeAt reports whether o is in force at now.
func (o Outage) activeAt(now time.Time) bool {
	return o.Mode != OutageNone && (o.Until.IsZero() || now.Before(o.Until))
}

// Faults is everything the fake can do wrong, and the limits it enforces.
type Faults struct {
	Latency          Duration        `json:"latency"`
	LatencyJitter    Duration        `json:"latency_jitter"`
	Outage           Outage          `json:"outage"`
	ErrorRates       map[int]float64 `json:"error_rates"`
	AfterApplyRates  map[int]float64 `json:"after_apply_rates"`
	AccountLimit     Limit           `json:"account_limit"`
	TokenLimit       Limit           `json:"token_limit"`
	RateLimitHeaders bool            `json:"rate_limit_headers"`
	AccountStatus    map[string]int  `json:"account_status"`
	OrgStatus        map[string]int  `json:"org_status"`
	// IgnoreIdempotency makes the fake apply a repeated Idempotency-Key again, as a server
	// without idempotency support would (no replays, no key conflicts), so tests can expose
	// duplicates.
	IgnoreIdempotency bool `json:"ignore_idempotency"`
}

// DefaultFaults returns Truto's documented limits and no faults.
func DefaultFaults() Faults {
	return Faults{
		AccountLimit: Limit{Requests: 50, Window: Duration(10 * time.Second)},
		TokenLimit:   Limit{Requests: 500, Window: Duration(10 * time.Second)},
	}
}

// clone returns a deep copy, so a stored Faults is never changed behind the fake's back.
func (x Faults) clone() Faults {
	x.ErrorRates = maps.Clone(x.ErrorRates)
	x.AfterApplyRates = maps.Clone(x.AfterApplyRates)
	x.AccountStatus = maps.Clone(x.AccountStatus)
	x.OrgStatus = maps.Clone(x.OrgStatus)
	return x
}

// Validate reports the first setting that the fake cannot honour.
func (x Faults) Validate() error {
	var errs []error
	if x.Latency < 0 || x.LatencyJitter < 0 {
		errs = append(errs, errors.New("latency and latency_jitter must not be negative"))
	}
	switch x.Outage.Mode {
	case OutageNone, Outage503, OutageReset, OutageHang:
	default:
		errs = append(errs, fmt.Errorf("outage.mode %q: want \"\", \"503\", \"reset\" or \"hang\"", x.Outage.Mode))
	}
	errs = append(errs, validateRates("error_rates", x.ErrorRates), validateRates("after_apply_rates", x.AfterApplyRates))
	for name, l := range map[string]Limit{"account_limit": x.AccountLimit, "token_limit": x.TokenLimit} {
		if l.Requests < 0 || l.Window < 0 {
			errs = append(errs, fmt.Errorf("%s: requests and window must not be negative", name))
		}
	}
	for name, m := range map[string]map[string]int{"account_status": x.AccountStatus, "org_status": x.OrgStatus} {
		for k, s := range m {
			if s < 400 || s > 599 {
				errs = append(errs, fmt.Errorf("%s[%q] = %d: want an error status 400..599", name, k, s))
			}
		}
	}
	return errors.Join(errs...)
}

// validateRates checks that rates is a probability distribution over error statuses.
func validateRates(name string, rates map[int]float64) error {
	sum := 0.0
	for s, p := range rates {
		if s < 400 || s > 599 {
			return fmt.Errorf("%s: status %d: want an error status 400..599", name, s)
		}
		if !(p >= 0 && p <= 1) {
			return fmt.Errorf("%s[%d] = %v: want a probability 0..1", name, s, p)
		}
		sum += p
	}
	if sum > 1+1e-9 {
		return fmt.Errorf("%s: probabilities add up to %v, more than 1", name, sum)
	}
	return nil
}

// SetFaults replaces every fault and limit.
func (f *Fake) SetFaults(x Faults) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.setFaultsLocked(x.clone())
}

// Faults returns a copy of the current faults.
func (f *Fake) Faults() Faults {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.faults.clone()
}

// UpdateFaults changes the faults atomically; fn gets a copy it may change freely and must
// not call methods of f.
func (f *Fake) UpdateFaults(fn func(*Faults)) {
	_ = f.updateFaults(func(x *Faults) error { fn(x); return nil })
}

// updateFaults is UpdateFaults for changes that can fail; nothing changes on error.
func (f *Fake) updateFaults(fn func(*Faults) error) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	x := f.faults.clone()
	if err := fn(&x); err != nil {
		return err
	}
	f.setFaultsLocked(x)
	return nil
}

// setFaultsLocked stores x (which nobody else holds) and wakes requests waiting on an outage.
func (f *Fake) setFaultsLocked(x Faults) {
	f.faults = x
	close(f.faultsChanged)
	f.faultsChanged = make(chan struct{})
}

// StartOutage starts an outage of the given mode for d (d <= 0: until EndOutage).
func (f *Fake) StartOutage(mode string, d time.Duration) {
	f.mu.Lock()
	defer f.mu.Unlock()
	x := f.faults.clone()
	x.Outage = Outage{Mode: mode}
	if d > 0 {
		x.Outage.Until = f.now().Add(d)
	}
	f.setFaultsLocked(x)
}

// EndOutage ends the current outage and releases hung requests.
func (f *Fake) EndOutage() {
	f.UpdateFaults(func(x *Faults) { x.Outage = Outage{} })
}
