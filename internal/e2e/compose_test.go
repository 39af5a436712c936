package e2e

import (
	"net"
	"os"
	"slices"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
)

// TestComposeFile checks docker-compose.yml parses and keeps the promises the
// README makes of it (no Docker engine is needed to run this test).
func TestComposeFile(t *testing.T) {
	t.Parallel()
	raw, err := os.ReadFile("../../docker-compose.yml")
	if err != nil {
		t.Fatal(err)
	}
	var c struct {
		Services map[string]struct {
			Build       any               `yaml:"build"`
			Image       string            `yaml:"image"`
			Command     []string          `yaml:"command"`
			Environment map[string]string `yaml:"environment"`
			Ports       []string          `yaml:"ports"`
			Healthcheck *struct {
				Test []string `yaml:"test"`
			} `yaml:"healthcheck"`
			DependsOn map[string]struct {
				Condition string `yaml:"condition"`
			} `yaml:"depends_on"`
			Secrets []string `yaml:"secrets"`
		} `yaml:"services"`
		Secrets map[string]struct {
			File string `yaml:"file"`
		} `yaml:"secrets"`
	}
	if err := yaml.Unmarshal(raw, &c); err != nil {
		t.Fatalf("docker-compose.yml does not parse: %v", err)
	}
	redis, ok := c.Services["redis"]
	if !ok {
		t.Fatal("no redis service")
	}
	cmd := strings.Join(redis.Command, " ")
	for _, want := range []string{"--appendonly yes", "--maxmemory-policy noeviction"} {
		if !strings.Contains(cmd, want) {
			t.Errorf("redis command %q lacks %q", cmd, want)
		}
	}
	if redis.Healthcheck == nil || len(redis.Healthcheck.Test) == 0 {
		t.Error("redis has no health check")
	}
	w, ok := c.Services["worker"]
	if !ok || w.Build == nil {
		t.Fatal("no worker service built from the repository")
	}
	if w.DependsOn["redis"].Condition != "service_healthy" {
		t.Error("worker does not wait for a healthy redis")
	}
	if w.Environment["TRUTO_API_TOKEN"] != "" || w.Environment["TRUTO_API_TOKEN_FILE"] == "" {
		t.Error("the worker must read the token from a file (TRUTO_API_TOKEN_FILE), never the environment")
	}
	if _, ok := c.Secrets["truto_token"]; !ok || len(w.Secrets) == 0 {
		t.Error("the token secret is not mounted into the worker")
	}
	// An admin endpoint beyond the container's loopback must ask for a token
	// read from a mounted secret (the worker warns at startup otherwise).
	if addr := w.Environment["ORGSYNC_ADMIN_ADDR"]; addr != "" && !loopbackAddr(addr) {
		file := w.Environment["ORGSYNC_ADMIN_TOKEN_FILE"]
		name, mounted := strings.CutPrefix(file, "/run/secrets/")
		if _, defined := c.Secrets[name]; !mounted || !defined || !slices.Contains(w.Secrets, name) {
			t.Errorf("the worker's admin endpoint listens on %s without a token from a mounted secret (ORGSYNC_ADMIN_TOKEN_FILE %q)", addr, file)
		}
	}
	ui, ok := c.Services["asynqmon"]
	if !ok {
		t.Fatal("no asynqmon service")
	}
	for name, s := range map[string][]string{"worker": w.Ports, "asynqmon": ui.Ports} {
		for _, p := range s {
			if !strings.HasPrefix(p, "127.0.0.1:") {
				t.Errorf("%s publishes %q beyond loopback", name, p)
			}
		}
	}
	if _, err := os.Stat("../../Dockerfile"); err != nil {
		t.Errorf("the worker's Dockerfile: %v", err)
	}
}

// loopbackAddr says whether a host:port listens on loopback only.
func loopbackAddr(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
