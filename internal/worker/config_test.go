package worker

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/orgsync/orgsync/internal/admission"
	"github.com/orgsync/orgsync/tasks"
)

func lookupFrom(m map[string]string) func(string) (string, bool) {
	return func(k string) (string, bool) { v, ok := m[k]; return v, ok }
}

func TestLoadConfigDefaults(t *testing.T) {
	t.Parallel()
	c, err := LoadConfig(nil, lookupFrom(map[string]string{"TRUTO_API_TOKEN": "tok"}), &bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	if c.Concurrency != 50 || c.AdminAddr != DefaultAdminAddr || c.Policy.MaxRetry != tasks.DefaultMaxRetry ||
		c.Policy.RetryBase != time.Second || c.Policy.RetryCap != 10*time.Minute || c.AttemptTimeout != 30*time.Second ||
		c.Policy.MaxAge != 72*time.Hour || c.ResultTTL != 168*time.Hour || c.RedisURL != "redis://127.0.0.1:6379/0" ||
		c.BaseURL != "https://api.truto.one" || c.Token.Value() != "tok" || c.EventsMaxLen != tasks.DefaultEventsMaxLen ||
		c.Lease != admission.DefaultLease {
		t.Errorf("defaults = %+v", c)
	}
}

func TestLoadConfigFlagsWinOverEnvironment(t *testing.T) {
	t.Parallel()
	env := map[string]string{"TRUTO_API_TOKEN": "tok", "ORGSYNC_CONCURRENCY": "7", "ORGSYNC_RETRY_MAX": "3", "ORGSYNC_ADMIN_ADDR": ""}
	c, err := LoadConfig([]string{"--concurrency", "9"}, lookupFrom(env), &bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	if c.Concurrency != 9 || c.Policy.MaxRetry != 3 || c.AdminAddr != "" {
		t.Errorf("concurrency %d (want the flag's 9), retry-max %d (want env 3), admin %q (an empty env disables it)", c.Concurrency, c.Policy.MaxRetry, c.AdminAddr)
	}
	c, _ = LoadConfig([]string{"--retry-max", "0"}, lookupFrom(env), &bytes.Buffer{})
	if c.Policy.MaxRetry >= 0 {
		t.Errorf("--retry-max 0 gave MaxRetry %d; want no retries (negative), not the default", c.Policy.MaxRetry)
	}
}

func TestLoadConfigNamesTheBadSetting(t *testing.T) {
	t.Parallel()
	tests := []struct {
		args []string
		env  map[string]string
		want string
	}{
		{[]string{"--concurrency", "zero"}, nil, `--concurrency (ORGSYNC_CONCURRENCY) = "zero": expected a whole number >= 1`},
		{nil, map[string]string{"ORGSYNC_RETRY_CAP": "10 minutes"}, `--retry-cap (ORGSYNC_RETRY_CAP) = "10 minutes": expected a positive duration`},
		{[]string{"--redis-url", "mysql://x"}, nil, "--redis-url (REDIS_URL)"},
		{[]string{"--log-level", "loud"}, nil, "expected debug, info, warn or error"},
		{[]string{"--queues", ",,"}, nil, "--queues"},
	}
	for _, tc := range tests {
		env := map[string]string{"TRUTO_API_TOKEN": "tok"}
		for k, v := range tc.env {
			env[k] = v
		}
		_, err := LoadConfig(tc.args, lookupFrom(env), &bytes.Buffer{})
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("LoadConfig(%v, %v) = %v; want an error containing %q", tc.args, tc.env, err, tc.want)
		}
	}
}

func TestLoadConfigToken(t *testing.T) {
	t.Parallel()
	if _, err := LoadConfig(nil, lookupFrom(nil), &bytes.Buffer{}); err == nil || !strings.Contains(err.Error(), "TRUTO_API_TOKEN") {
		t.Errorf("no token: err = %v, want one that names TRUTO_API_TOKEN", err)
	}
	file := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(file, []byte("from-file\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := LoadConfig([]string{"--token-file", file}, lookupFrom(map[string]string{"TRUTO_API_TOKEN": "from-env"}), &bytes.Buffer{})
	if err != nil || c.Token.Value() != "from-file" {
		t.Errorf("token = %v, %v; want the file's, trimmed", c.Token.Value(), err)
	}
	for _, s := range []string{c.Token.String(), c.Token.GoString()} {
		if strings.Contains(s, "from-file") {
			t.Errorf("the token prints as %q", s)
		}
	}
}

func TestUsageNeverShowsEnvironmentValues(t *testing.T) {
	t.Parallel()
	var usage bytes.Buffer
	env := map[string]string{"REDIS_URL": "redis://:hunter2@redis:6379/0", "TRUTO_API_TOKEN": "tok"}
	_, err := LoadConfig([]string{"--no-such-flag"}, lookupFrom(env), &usage)
	if err == nil {
		t.Fatal("an unknown flag was accepted")
	}
	if strings.Contains(usage.String()+err.Error(), "hunter2") {
		t.Errorf("the Redis password appears in the usage text:\n%s", usage.String())
	}
}

func TestLoadConfigEventsMaxLen(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		args    []string
		env     map[string]string
		want    int64 // in Config
		store   int64 // what the Store is given
		wantErr string
	}{
		{"default", nil, nil, tasks.DefaultEventsMaxLen, tasks.DefaultEventsMaxLen, ""},
		{"flag", []string{"--events-max-len", "5000"}, nil, 5000, 5000, ""},
		{"env", nil, map[string]string{"ORGSYNC_EVENTS_MAX_LEN": "250000"}, 250000, 250000, ""},
		{"flag wins", []string{"--events-max-len=7"}, map[string]string{"ORGSYNC_EVENTS_MAX_LEN": "9"}, 7, 7, ""},
		{"zero turns events off", nil, map[string]string{"ORGSYNC_EVENTS_MAX_LEN": "0"}, -1, 0, ""},
		{"negative", []string{"--events-max-len", "-1"}, nil, 0, 0,
			`--events-max-len (ORGSYNC_EVENTS_MAX_LEN) = "-1": expected a whole number >= 0 (entries the outcome stream keeps; 0 turns outcome events off)`},
		{"not a number", nil, map[string]string{"ORGSYNC_EVENTS_MAX_LEN": "100k"}, 0, 0, `--events-max-len (ORGSYNC_EVENTS_MAX_LEN) = "100k": expected a whole number >= 0`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c, ok := loadCase(t, tt.args, tt.env, tt.wantErr)
			if !ok {
				return
			}
			if c.EventsMaxLen != tt.want || eventsMaxLen(c.EventsMaxLen) != tt.store {
				t.Errorf("EventsMaxLen %d (store gets %d), want %d (store %d)", c.EventsMaxLen, eventsMaxLen(c.EventsMaxLen), tt.want, tt.store)
			}
		})
	}
	// A Config built in code (the demo, tests) without the field gets the default.
	if got := eventsMaxLen(Config{}.EventsMaxLen); got != tasks.DefaultEventsMaxLen {
		t.Errorf("zero Config: store gets %d, want the default %d", got, tasks.DefaultEventsMaxLen)
	}
}
