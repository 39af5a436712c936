// Package trutotest is an in-process fake of Truto's Update Organization API, with fault
// injection (latency, outages, error rates, forced statuses, rate limits) and exact counts of
// what it received and applied, so tests can prove nothing was lost, applied twice or reordered.
//
// It uses only the standard library and does not import trutoclient, so it stays an
// independent check of that client.
package trutotest

import (
	"crypto/subtle"
	"encoding/json"
	"maps"
	"math/rand/v2"
	"net/http"
	"slices"
	"sync"
	"time"
)

const (
	defaultMaxRecorded = 10000
	defaultSeed        = 1
)

// Fake is a fake Truto server; it implements http.Handler and is safe for concurrent use.
type Fake struct {
	token       string
	now         func() time.Time
	maxRecorded int

	// done is closed by Shutdown; it cuts latency short and drops hung requests.
	done      chan struct{}
	closeOnce sync.Once

	mu            sync.Mutex
	faults        Faults        // replaced whole, never changed in place
	faultsChanged chan struct{} // closed and replaced whenever faults change, to wake hung requests
	rng           *rand.Rand
	stats         Stats
	keys          map[string]*keyState
	orgs          map[orgKey]*org
	tokenWin      window
	accountWins   map[string]*window
	records       []RecordedRequest
	recStart      int                 // index of the oldest record once the ring is full
	keyLocks      map[string]*keyLock // serialize requests per idempotency key
	hung          int                 // requests blocked in a hang outage, so tests can wait for one
}

// Option configures a Fake.
type Option func(*Fake)

// WithFaults sets the initial faults (default DefaultFaults()).
func WithFaults(x Faults) Option { return func(f *Fake) { f.faults = x.clone() } }

// WithSeed seeds the random faults so a sequential run is reproducible (default seed 1).
func WithSeed(seed uint64) Option {
	return func(f *Fake) { f.rng = rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)) }
}

// WithClock sets the clock used for rate windows, outage windows and timestamps.
func WithClock(now func() time.Time) Option { return func(f *Fake) { f.now = now } }

// WithMaxRecorded sets how many recent requests Requests keeps (default 10000; 0 keeps
// none). Counts are complete whatever this is.
func WithMaxRecorded(n int) Option { return func(f *Fake) { f.maxRecorded = max(n, 0) } }

// New returns a fake that accepts the API token token.
func New(token string, opts ...Option) *Fake {
	f := &Fake{
		token:         token,
		now:           time.Now,
		maxRecorded:   defaultMaxRecorded,
		done:          make(chan struct{}),
		faults:        DefaultFaults(),
		faultsChanged: make(chan struct{}),
		keyLocks:      map[string]*keyLock{},
	}
	WithSeed(defaultSeed)(f)
	for _, o := range opts {
		o(f)
	}
	f.resetLocked()
	return f
}

// Shutdown cuts every latency wait short and drops every hung request (as a reset), so a
// server in front of f can shut down at once; from then on latency is skipped and a hang
// outage drops requests instead of holding them.
func (f *Fake) Shutdown() { f.closeOnce.Do(func() { close(f.done) }) }

// Hung returns how many requests are blocked in a "hang" outage right now.
func (f *Fake) Hung() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.hung
}

// Stats counts PATCH requests; every field is exact.
type Stats struct {
	Requests         int         `json:"requests"`          // PATCH requests received (all answers)
	ByStatus         map[int]int `json:"by_status"`         // answers by status; resets and hangs under 0
	Effects          int         `json:"effects"`           // PATCHes applied to state
	DuplicateEffects int         `json:"duplicate_effects"` // effects for a key already applied (IgnoreIdempotency only)
	Replays          int         `json:"replays"`           // answered from the idempotency cache
	KeyConflicts     int         `json:"key_conflicts"`     // same key, different request (422, no effect)
	RateLimited      int         `json:"rate_limited"`      // 429s sent, whatever their cause
	Unkeyed          int         `json:"unkeyed"`           // PATCHes without Idempotency-Key
}

// KeyRecord counts what happened under one idempotency key.
type KeyRecord struct {
	Requests int `json:"requests"` // PATCH requests carrying the key (all answers)
	Effects  int `json:"effects"`  // of those, applied to state
}

// keyState is a key's counts and its cached answer.
type keyState struct {
	KeyRecord
	cached      bool
	fingerprint [32]byte
	answer      []byte
	contentType string
}

// keyLock is a reference-counted per-key mutex, dropped from the map when unused.
type keyLock struct {
	mu   sync.Mutex
	refs int
}

// lockKey serializes requests carrying key, so two of them never both apply.
func (f *Fake) lockKey(key string) func() {
	f.mu.Lock()
	kl := f.keyLocks[key]
	if kl == nil {
		kl = &keyLock{}
		f.keyLocks[key] = kl
	}
	kl.refs++
	f.mu.Unlock()
	kl.mu.Lock()
	return func() {
		kl.mu.Unlock()
		f.mu.Lock()
		if kl.refs--; kl.refs == 0 {
			delete(f.keyLocks, key)
		}
		f.mu.Unlock()
	}
}

// Stats returns a copy of the counts.
func (f *Fake) Stats() Stats {
	f.mu.Lock()
	defer f.mu.Unlock()
	s := f.stats
	s.ByStatus = maps.Clone(s.ByStatus)
	return s
}

// Key returns the counts for one idempotency key.
func (f *Fake) Key(key string) KeyRecord {
	f.mu.Lock()
	defer f.mu.Unlock()
	if ks := f.keys[key]; ks != nil {
		return ks.KeyRecord
	}
	return KeyRecord{}
}

// EffectsByKey returns, for every idempotency key seen on a PATCH, how many times it was
// applied (0 included, so a lost update shows).
func (f *Fake) EffectsByKey() map[string]int {
	f.mu.Lock()
	defer f.mu.Unlock()
	m := make(map[string]int, len(f.keys))
	for k, ks := range f.keys {
		m[k] = ks.Effects
	}
	return m
}

// Reset clears state, counts and records, keeping faults and options.
func (f *Fake) Reset() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.resetLocked()
}

func (f *Fake) resetLocked() {
	f.stats = Stats{ByStatus: map[int]int{}}
	f.keys = map[string]*keyState{}
	f.orgs = map[orgKey]*org{}
	f.tokenWin = window{}
	f.accountWins = map[string]*window{}
	f.records = nil
	f.recStart = 0
}

// RecordedRequest is one request to Truto's API as the fake saw and answered it.
type RecordedRequest struct {
	Time           time.Time
	Method         string
	RawPath        string // escaped path as received
	RawQuery       string
	Header         http.Header // Authorization redacted
	Body           []byte
	Status         int // 0: connection reset or dropped without an answer
	Answer         []byte
	AnswerHeader   http.Header // headers set on the answer (Retry-After, ratelimit-*), when any
	Account        string      // integrated_account_id
	OrgID          string      // decoded organization id
	IdempotencyKey string
}

// MarshalJSON writes the bodies as text rather than base64, for people reading /_fake/requests.
func (r RecordedRequest) MarshalJSON() ([]byte, error) {
	return json.Marshal(struct {
		Time           time.Time   `json:"time"`
		Method         string      `json:"method"`
		RawPath        string      `json:"raw_path"`
		RawQuery       string      `json:"raw_query"`
		Header         http.Header `json:"header"`
		Body           string      `json:"body"`
		Status         int         `json:"status"`
		Answer         string      `json:"answer"`
		Account        string      `json:"account"`
		OrgID          string      `json:"org_id"`
		IdempotencyKey string      `json:"idempotency_key"`
	}{r.Time, r.Method, r.RawPath, r.RawQuery, r.Header, string(r.Body), r.Status, string(r.Answer),
		r.Account, r.OrgID, r.IdempotencyKey})
}

// Requests returns the recorded requests, oldest first, at most MaxRecorded of them.
func (f *Fake) Requests() []RecordedRequest {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Concat(f.records[f.recStart:], f.records[:f.recStart])
}

// recordLocked keeps rec in the ring of recent requests.
func (f *Fake) recordLocked(rec RecordedRequest) {
	switch {
	case f.maxRecorded == 0:
	case len(f.records) < f.maxRecorded:
		f.records = append(f.records, rec)
	default:
		f.records[f.recStart] = rec
		f.recStart = (f.recStart + 1) % f.maxRecorded
	}
}

// redact copies h with credentials hidden, so records can be printed safely.
func redact(h http.Header) http.Header {
	h = h.Clone()
	for _, k := range []string{"Authorization", "Proxy-Authorization"} {
		if vs := h.Values(k); len(vs) > 0 {
			h.Set(k, "Bearer [REDACTED]")
		}
	}
	if h.Get("Cookie") != "" {
		h.Set("Cookie", "[REDACTED]")
	}
	return h
}

// authorized reports whether r carries the fake's token, in constant time.
func (f *Fake) authorized(r *http.Request) bool {
	got := r.Header.Get("Authorization")
	want := "Bearer " + f.token
	return f.token != "" && subtle.ConstantTimeCompare([]byte(got), []byte(want)) == 1
}
