// Package worker assembles orgsync's worker: configuration from flags and
// environment, the asynq server running the tasks handler against Truto, and
// the admin HTTP endpoint. cmd/worker and cmd/demo both run it.
package worker

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/orgsync/orgsync/internal/admin"
	"github.com/orgsync/orgsync/internal/admission"
	"github.com/orgsync/orgsync/internal/circuit"
	"github.com/orgsync/orgsync/internal/ratelimit"
	"github.com/orgsync/orgsync/internal/redisconn"
	"github.com/orgsync/orgsync/tasks"
	"github.com/orgsync/orgsync/trutoclient"
)

// Defaults of the settings that are not the tasks policy's.
const (
	DefaultConcurrency     = 50
	DefaultAdminAddr       = "127.0.0.1:9464"
	DefaultShutdownTimeout = 25 * time.Second
	// DefaultPollInterval is asynq's idle poll (TaskCheckInterval): admission
	// wakes at once when work is ready, and an idle asynq processor finds the
	// admitted update at its next poll, on average this long later.
	DefaultPollInterval      = 50 * time.Millisecond
	DefaultRetryPollInterval = time.Second
)

// Token is the Truto API token. It prints as [redacted] in every format.
type Token struct{ v string }

// Value returns the token itself, for the one place that needs it.
func (t Token) Value() string { return t.v }

// String redacts.
func (t Token) String() string { return "[redacted]" }

// GoString redacts.
func (t Token) GoString() string { return "[redacted]" }

// MarshalText redacts.
func (t Token) MarshalText() ([]byte, error) { return []byte("[redacted]"), nil }

// Config is everything the worker is told. Flags win over environment.
type Config struct {
	RedisURL    string
	Token       Token
	BaseURL     string
	Queues      []string
	Concurrency int
	AdminAddr   string
	// AdminToken, when set, is the bearer token the admin endpoint asks for
	// on everything but /healthz and /readyz.
	AdminToken Token
	// AdminAllowedHosts are the Host header names the admin endpoint answers
	// to besides localhost and IP addresses; "*" accepts any.
	AdminAllowedHosts []string
	// AdminMaxConns caps the connections the admin endpoint holds at once.
	AdminMaxConns int
	// AdminUIWritable lets the queue UI change tasks and queues (delete, run,
	// archive, pause); it is read-only otherwise.
	AdminUIWritable bool
	Policy          tasks.Policy
	AttemptTimeout  time.Duration
	ResultTTL       time.Duration
	ShutdownTimeout time.Duration
	// PollInterval is how often an idle worker looks for new tasks (asynq TaskCheckInterval).
	PollInterval time.Duration
	// RetryPollInterval is how often due retries and waits are moved back to
	// the queue (asynq DelayedTaskCheckInterval; its default of 5 s would make
	// every wait up to 5 s longer).
	RetryPollInterval time.Duration
	LogLevel          string
	// Shared rate limits (internal/ratelimit); a zero Limit disables one.
	AccountRate  ratelimit.Limit
	TokenRate    ratelimit.Limit
	RateHeadroom float64
	// MaxAdmitted bounds the updates admitted and not yet started, all
	// workers together, in each admission shard.
	MaxAdmitted int
	// Shards is how many hash slots admission spreads the accounts over (a
	// Redis Cluster's masters); every worker must name the same count.
	Shards int
	// Lease is how long a silent worker's admitted or running updates stay its.
	Lease time.Duration
	// AccountFailures is how many transient failures of an account in a row hold its lane.
	AccountFailures int
	// The shared circuit breaker (internal/circuit).
	Circuit circuit.Config
	// EventsMaxLen caps the outcome event stream at about this many entries
	// (tasks.WithEventsMaxLen): 0 means tasks.DefaultEventsMaxLen, negative
	// writes no events (LoadConfig turns an explicit 0 into -1).
	EventsMaxLen int64
}

// setting is one flag with its environment twin.
type setting struct {
	flag, env, def, usage string
}

var settings = []setting{
	{"redis-url", "REDIS_URL", redisconn.DefaultURL, "Redis URL: " + redisconn.Forms},
	{"token-file", "TRUTO_API_TOKEN_FILE", "", "file holding the Truto API token (else TRUTO_API_TOKEN)"},
	{"base-url", "TRUTO_BASE_URL", trutoclient.DefaultBaseURL, "Truto API base URL (a path prefix is kept)"},
	{"queues", "ORGSYNC_QUEUES", tasks.DefaultQueue, "comma-separated queues to serve, optionally NAME=PRIORITY"},
	{"concurrency", "ORGSYNC_CONCURRENCY", strconv.Itoa(DefaultConcurrency), "updates run at once by this process"},
	{"admin-addr", "ORGSYNC_ADMIN_ADDR", DefaultAdminAddr, "address of the admin endpoint (health, /metrics, queue UI under /ui/, JSON API under /api/); empty disables"},
	{"admin-token-file", "ORGSYNC_ADMIN_TOKEN_FILE", "", "file holding a bearer token the admin endpoint requires on all but /healthz and /readyz; empty: no token"},
	{"admin-allowed-hosts", "ORGSYNC_ADMIN_ALLOWED_HOSTS", "", "comma-separated host names the admin endpoint answers to besides localhost and IP addresses (a DNS-rebinding guard; health checks answer any); * for any"},
	{"admin-max-conns", "ORGSYNC_ADMIN_MAX_CONNS", strconv.Itoa(admin.DefaultMaxConns), "connections the admin endpoint holds at once; at the cap a newcomer replaces the one quiet longest, or waits"},
	{"admin-ui-writable", "ORGSYNC_ADMIN_UI_WRITABLE", "false", "let the queue UI under /ui/ delete, run, archive tasks and pause queues (true or false)"},
	{"retry-max", "ORGSYNC_RETRY_MAX", strconv.Itoa(tasks.DefaultMaxRetry), "retries that spend budget before an update is dead-lettered"},
	{"retry-base", "ORGSYNC_RETRY_BASE", tasks.DefaultRetryBase.String(), "first retry backoff"},
	{"retry-cap", "ORGSYNC_RETRY_CAP", tasks.DefaultRetryCap.String(), "largest retry backoff"},
	{"attempt-timeout", "ORGSYNC_ATTEMPT_TIMEOUT", trutoclient.DefaultTimeout.String(), "time allowed for one PATCH"},
	{"max-age", "ORGSYNC_MAX_AGE", tasks.DefaultMaxAge.String(), "wall-clock budget since enqueue; older updates are dead-lettered as expired"},
	{"result-ttl", "ORGSYNC_RESULT_TTL", tasks.DefaultResultTTL.String(), "how long results and the idempotency ledger are kept"},
	{"shutdown-timeout", "ORGSYNC_SHUTDOWN_TIMEOUT", DefaultShutdownTimeout.String(), "on SIGTERM, time for in-flight updates to finish before they are handed back"},
	{"poll-interval", "ORGSYNC_POLL_INTERVAL", DefaultPollInterval.String(), "how often an idle worker looks for work"},
	{"retry-poll-interval", "ORGSYNC_RETRY_POLL_INTERVAL", DefaultRetryPollInterval.String(), "how often asynq re-queues a run that ended in Redis trouble"},
	{"max-admitted", "ORGSYNC_MAX_ADMITTED", strconv.Itoa(admission.DefaultMaxAdmitted), "updates admitted to the queue and not yet started, all workers together, per shard"},
	{"shards", "ORGSYNC_SHARDS", "1", "hash slots admission spreads the integrated accounts over (on a Redis Cluster, about one per master); the same on every worker; changed only while nothing waits, 1 to " + strconv.Itoa(admission.MaxShards)},
	{"lease", "ORGSYNC_LEASE", admission.DefaultLease.String(), "how long an admitted or running update stays with a worker that stopped heartbeating (a killed worker's updates go again after this)"},
	{"log-level", "ORGSYNC_LOG_LEVEL", "info", "debug, info, warn or error"},
	{"account-rate", "ORGSYNC_ACCOUNT_RATE", ratelimit.DefaultAccountLimit.String(), "requests per integrated account, N/window, shared by all workers; 0 = no limit"},
	{"token-rate", "ORGSYNC_TOKEN_RATE", ratelimit.DefaultTokenLimit.String(), "requests per API token, N/window, shared by all workers; 0 = no limit"},
	{"rate-headroom", "ORGSYNC_RATE_HEADROOM", "0.05", "fraction of each rate limit left unused, for network jitter (0..0.5)"},
	{"circuit-min-failures", "ORGSYNC_CIRCUIT_MIN_FAILURES", strconv.Itoa(circuit.DefaultMinFailures), "transient failures in the window before the circuit may open; 0 disables the breaker"},
	{"circuit-min-accounts", "ORGSYNC_CIRCUIT_MIN_ACCOUNTS", strconv.Itoa(circuit.DefaultMinAccounts), "accounts with failures in the window before the circuit may open (one failing account only holds its own lane)"},
	{"account-failures", "ORGSYNC_ACCOUNT_FAILURES", strconv.Itoa(admission.DefaultAccountFailures), "transient failures of one account in a row that hold its lane (1 s, doubling, up to a minute)"},
	{"circuit-threshold", "ORGSYNC_CIRCUIT_THRESHOLD", "0.5", "fraction of requests in the window failing that opens the circuit"},
	{"circuit-window", "ORGSYNC_CIRCUIT_WINDOW", circuit.DefaultWindow.String(), "how far back the circuit breaker counts"},
	{"circuit-probe-interval", "ORGSYNC_CIRCUIT_PROBE_INTERVAL", circuit.DefaultProbeInterval.String(), "while open, one probe request per interval"},
	{"circuit-ramp", "ORGSYNC_CIRCUIT_RAMP", "0s", "after closing, time over which the admitted share grows from 10% to 100%; 0: the backlog goes at full limit at once"},
	{"events-max-len", "ORGSYNC_EVENTS_MAX_LEN", strconv.Itoa(tasks.DefaultEventsMaxLen), "about how many outcome events (completed, dead, run done) the Redis Stream keeps; 0 writes none"},
}

// ErrHelp is returned by LoadConfig when -h or --help was asked for.
var ErrHelp = flag.ErrHelp

// LoadConfig reads flags from args and, for each flag not given, its
// environment twin through lookup (os.LookupEnv: a variable set to "" counts,
// so ORGSYNC_ADMIN_ADDR= disables the admin endpoint). A malformed setting is
// an error naming the setting, the value and the expected form. Usage text
// shows only the built-in defaults, never the environment's values (a
// REDIS_URL may hold a password).
func LoadConfig(args []string, lookup func(string) (string, bool), usage io.Writer) (Config, error) {
	fs := flag.NewFlagSet("worker", flag.ContinueOnError)
	fs.SetOutput(usage)
	vals := map[string]*string{}
	for _, s := range settings {
		vals[s.flag] = fs.String(s.flag, s.def, s.usage+" (env "+s.env+")")
	}
	if err := fs.Parse(args); err != nil {
		return Config{}, err
	}
	if fs.NArg() > 0 {
		return Config{}, fmt.Errorf("unexpected argument %q: the worker takes only flags (see --help)", fs.Arg(0))
	}
	given := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { given[f.Name] = true })
	for _, s := range settings {
		if v, ok := lookup(s.env); ok && !given[s.flag] {
			*vals[s.flag] = v
		}
	}
	env := func(k string) string { v, _ := lookup(k); return v }
	var errs []error
	get := func(name string) string { return strings.TrimSpace(*vals[name]) }
	envOf := func(name string) string {
		for _, s := range settings {
			if s.flag == name {
				return s.env
			}
		}
		return ""
	}
	bad := func(name, form string) {
		errs = append(errs, fmt.Errorf("--%s (%s) = %q: expected %s", name, envOf(name), get(name), form))
	}
	duration := func(name string, allowZero bool) time.Duration {
		d, err := time.ParseDuration(get(name))
		if err != nil || d < 0 || (!allowZero && d == 0) {
			bad(name, "a positive duration such as 30s, 10m or 72h")
		}
		return d
	}
	integer := func(name string, lo int) int {
		n, err := strconv.Atoi(get(name))
		if err != nil || n < lo {
			bad(name, fmt.Sprintf("a whole number >= %d", lo))
		}
		return n
	}

	c := Config{
		RedisURL:          get("redis-url"),
		BaseURL:           get("base-url"),
		AdminAddr:         get("admin-addr"),
		AdminMaxConns:     integer("admin-max-conns", 1),
		Concurrency:       integer("concurrency", 1),
		AttemptTimeout:    duration("attempt-timeout", false),
		ResultTTL:         duration("result-ttl", false),
		ShutdownTimeout:   duration("shutdown-timeout", false),
		PollInterval:      duration("poll-interval", false),
		RetryPollInterval: duration("retry-poll-interval", false),
		LogLevel:          get("log-level"),
		Policy: tasks.Policy{
			MaxRetry:  integer("retry-max", 0),
			RetryBase: duration("retry-base", false),
			RetryCap:  duration("retry-cap", false),
			MaxAge:    duration("max-age", false),
		},
		MaxAdmitted:     integer("max-admitted", 1),
		Shards:          integer("shards", 1),
		AccountFailures: integer("account-failures", 1),
		Lease:           duration("lease", false),
	}
	if c.Shards > admission.MaxShards {
		bad("shards", fmt.Sprintf("a whole number from 1 to %d", admission.MaxShards))
	}
	rate := func(name string) ratelimit.Limit {
		l, err := ratelimit.Parse(get(name))
		if err != nil {
			bad(name, "N/window such as 50/10s, or 0 for no limit")
		}
		return l
	}
	fraction := func(name string, lo, hi float64) float64 {
		f, err := strconv.ParseFloat(get(name), 64)
		if err != nil || f < lo || f > hi {
			bad(name, fmt.Sprintf("a number from %g to %g", lo, hi))
		}
		return f
	}
	c.AccountRate, c.TokenRate = rate("account-rate"), rate("token-rate")
	c.RateHeadroom = fraction("rate-headroom", 0, 0.5)
	if c.RateHeadroom == 0 {
		c.RateHeadroom = -1 // explicit 0: none (the limiter's zero means its default)
	}
	c.Circuit = circuit.Config{
		MinFailures:   integer("circuit-min-failures", 0),
		MinAccounts:   integer("circuit-min-accounts", 1),
		Threshold:     fraction("circuit-threshold", 0.01, 1),
		Window:        duration("circuit-window", false),
		ProbeInterval: duration("circuit-probe-interval", false),
		Ramp:          duration("circuit-ramp", true),
	}
	c.Circuit.Disabled = c.Circuit.MinFailures == 0
	if c.Circuit.Ramp == 0 {
		c.Circuit.Ramp = -1 // explicit 0: no ramp
	}
	switch n, err := strconv.ParseInt(get("events-max-len"), 10, 64); {
	case err != nil || n < 0:
		bad("events-max-len", "a whole number >= 0 (entries the outcome stream keeps; 0 turns outcome events off)")
	case n == 0:
		c.EventsMaxLen = -1 // explicit 0: no events (the zero Config means the default)
	default:
		c.EventsMaxLen = n
	}
	if c.Lease > 0 && c.Lease < time.Second {
		bad("lease", "a duration of at least 1s (leases are renewed every third of it)")
	}
	if c.Policy.MaxRetry == 0 {
		c.Policy.MaxRetry = -1 // an explicit 0 means "no retries", not "the default"
	}
	if _, err := redisconn.Parse(c.RedisURL); err != nil {
		errs = append(errs, fmt.Errorf("--redis-url (REDIS_URL): %w", err))
	}
	for _, q := range strings.Split(get("queues"), ",") {
		name, _, _ := strings.Cut(strings.TrimSpace(q), "=")
		if name == "" {
			bad("queues", "comma-separated queue names, e.g. orgsync or orgsync=6,bulk=1")
			break
		}
		c.Queues = append(c.Queues, strings.TrimSpace(q))
	}
	switch c.LogLevel {
	case "debug", "info", "warn", "error":
	default:
		bad("log-level", "debug, info, warn or error")
	}
	if hosts, err := admin.ParseAllowedHosts(get("admin-allowed-hosts")); err != nil {
		errs = append(errs, fmt.Errorf("--admin-allowed-hosts (ORGSYNC_ADMIN_ALLOWED_HOSTS): %w", err))
	} else {
		c.AdminAllowedHosts = hosts
	}
	switch w, err := strconv.ParseBool(get("admin-ui-writable")); {
	case err != nil:
		bad("admin-ui-writable", "true or false")
	default:
		c.AdminUIWritable = w
	}
	if file := get("admin-token-file"); file != "" {
		at, err := loadAdminToken(file)
		if err != nil {
			errs = append(errs, err)
		}
		c.AdminToken = at
	}
	tok, err := loadToken(get("token-file"), env)
	if err != nil {
		errs = append(errs, err)
	}
	c.Token = tok
	return c, errors.Join(errs...)
}

// loadToken reads the token from a file (trailing newline trimmed) or the environment.
func loadToken(file string, env func(string) string) (Token, error) {
	if file != "" {
		b, err := os.ReadFile(file)
		if err != nil {
			return Token{}, fmt.Errorf("--token-file (TRUTO_API_TOKEN_FILE): %w", err)
		}
		t := strings.TrimSpace(string(b))
		if t == "" {
			return Token{}, fmt.Errorf("--token-file (TRUTO_API_TOKEN_FILE) %s is empty: put the Truto API token in it", file)
		}
		return Token{v: t}, nil
	}
	if t := strings.TrimSpace(env("TRUTO_API_TOKEN")); t != "" {
		return Token{v: t}, nil
	}
	return Token{}, errors.New("no Truto API token: set TRUTO_API_TOKEN, or TRUTO_API_TOKEN_FILE / --token-file to a file holding it")
}

// loadAdminToken reads the admin endpoint's bearer token from file. The
// errors name the file, never its content.
func loadAdminToken(file string) (Token, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return Token{}, fmt.Errorf("--admin-token-file (ORGSYNC_ADMIN_TOKEN_FILE): %w", err)
	}
	t := strings.TrimSpace(string(b))
	if t == "" {
		return Token{}, fmt.Errorf("--admin-token-file (ORGSYNC_ADMIN_TOKEN_FILE) %s is empty: put a bearer token in it, or unset the setting to serve the admin endpoint without one", file)
	}
	if strings.ContainsFunc(t, func(r rune) bool { return r <= ' ' || r == 0x7f }) {
		return Token{}, fmt.Errorf("--admin-token-file (ORGSYNC_ADMIN_TOKEN_FILE) %s: the token must be one line of printable characters without spaces", file)
	}
	return Token{v: t}, nil
}

// QueueNames are the served queues without their priorities.
func (c Config) QueueNames() []string {
	names := make([]string, 0, len(c.Queues))
	for _, q := range c.Queues {
		name, _, _ := strings.Cut(q, "=")
		names = append(names, name)
	}
	return names
}

// QueuePriorities turns the Queues setting into asynq's map.
func (c Config) QueuePriorities() map[string]int {
	m := map[string]int{}
	for _, q := range c.Queues {
		name, prio, ok := strings.Cut(q, "=")
		p, err := strconv.Atoi(prio)
		if !ok || err != nil || p < 1 {
			p = 1
		}
		m[name] = p
	}
	return m
}

// NewToken wraps a token value (the demo and tests).
func NewToken(v string) Token { return Token{v: v} }
