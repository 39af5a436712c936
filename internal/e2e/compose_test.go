package e2e

import (
	"net"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/hibiken/asynq"
	"go.yaml.in/yaml/v3"

	"github.com/orgsync/orgsync/internal/redisconn"
)

// composeService is what the compose tests read of a service.
type composeService struct {
	Build       any               `yaml:"build"`
	Image       string            `yaml:"image"`
	Entrypoint  []string          `yaml:"entrypoint"`
	Command     []string          `yaml:"command"`
	Hostname    string            `yaml:"hostname"`
	Environment map[string]string `yaml:"environment"`
	Ports       []string          `yaml:"ports"`
	Profiles    []string          `yaml:"profiles"`
	Deploy      struct {
		Replicas int `yaml:"replicas"`
	} `yaml:"deploy"`
	Healthcheck *struct {
		Test []string `yaml:"test"`
	} `yaml:"healthcheck"`
	DependsOn map[string]struct {
		Condition string `yaml:"condition"`
	} `yaml:"depends_on"`
	Secrets []string `yaml:"secrets"`
}

// composeFile is docker-compose.yml as the tests read it.
type composeFile struct {
	Services map[string]composeService `yaml:"services"`
	Secrets  map[string]struct {
		File string `yaml:"file"`
	} `yaml:"secrets"`
}

func readCompose(t *testing.T) composeFile {
	t.Helper()
	raw, err := os.ReadFile("../../docker-compose.yml")
	if err != nil {
		t.Fatal(err)
	}
	var c composeFile
	if err := yaml.Unmarshal(raw, &c); err != nil {
		t.Fatalf("docker-compose.yml does not parse: %v", err)
	}
	return c
}

// isWorker says whether a service runs orgsync's worker (the image's
// entrypoint, not the CLI's).
func (s composeService) isWorker() bool { return s.Image == "orgsync:latest" && len(s.Entrypoint) == 0 }

// TestComposeFile checks docker-compose.yml parses and keeps the promises the
// README makes of it (no Docker engine is needed to run this test).
func TestComposeFile(t *testing.T) {
	t.Parallel()
	c := readCompose(t)
	// One image, built once: the profiles' workers run it without building it again.
	for name, svc := range c.Services {
		if (svc.Build != nil) != (name == "worker") {
			t.Errorf("service %s: build %v; only worker builds the image", name, svc.Build)
		}
	}
	redis, ok := c.Services["redis"]
	if !ok {
		t.Fatal("no redis service")
	}
	checkDurableRedis(t, "redis", redis)
	w, ok := c.Services["worker"]
	if !ok || w.Build == nil {
		t.Fatal("no worker service built from the repository")
	}
	if w.DependsOn["redis"].Condition != "service_healthy" {
		t.Error("worker does not wait for a healthy redis")
	}
	// Plain `docker compose up` starts what it always did: the profiles
	// only add.
	var defaults []string
	for name, s := range c.Services {
		if len(s.Profiles) == 0 {
			defaults = append(defaults, name)
		}
	}
	slices.Sort(defaults)
	if want := []string{"asynqmon", "redis", "worker"}; !slices.Equal(defaults, want) {
		t.Errorf("services without a profile (what `docker compose up` starts): %v; want %v", defaults, want)
	}
	for name, s := range c.Services {
		if s.isWorker() {
			checkWorkerService(t, c, name, s)
		}
	}
	if _, ok := c.Services["asynqmon"]; !ok {
		t.Fatal("no asynqmon service")
	}
	// Every published port on loopback, and no host port published twice:
	// profiles run beside the default set-up, so their ports must not
	// collide with its ports or each other's.
	owner := map[int]string{}
	for name, s := range c.Services {
		for _, p := range s.Ports {
			if !strings.HasPrefix(p, "127.0.0.1:") {
				t.Errorf("%s publishes %q beyond loopback", name, p)
			}
			lo, hi, ok := hostPorts(p)
			if !ok {
				t.Errorf("%s publishes %q: want 127.0.0.1:HOST[-HOST]:CONTAINER", name, p)
				continue
			}
			for port := lo; port <= hi; port++ {
				if o, taken := owner[port]; taken {
					t.Errorf("host port %d published by both %s and %s", port, o, name)
				}
				owner[port] = name
			}
		}
	}
	if _, err := os.Stat("../../Dockerfile"); err != nil {
		t.Errorf("the worker's Dockerfile: %v", err)
	}
}

// checkDurableRedis: AOF, noeviction and a health check, as the README asks
// of any Redis orgsync uses.
func checkDurableRedis(t *testing.T, name string, s composeService) {
	t.Helper()
	cmd := strings.Join(s.Command, " ")
	for _, want := range []string{"--appendonly yes", "--maxmemory-policy noeviction"} {
		if !strings.Contains(cmd, want) {
			t.Errorf("%s command %q lacks %q", name, cmd, want)
		}
	}
	if s.Healthcheck == nil || len(s.Healthcheck.Test) == 0 {
		t.Errorf("%s has no health check", name)
	}
}

// checkWorkerService: the token from a mounted file, never the environment,
// and an admin endpoint beyond the container's loopback only behind a token
// read from a mounted secret (the worker warns at startup otherwise).
func checkWorkerService(t *testing.T, c composeFile, name string, w composeService) {
	t.Helper()
	if w.Environment["TRUTO_API_TOKEN"] != "" || w.Environment["TRUTO_API_TOKEN_FILE"] == "" {
		t.Errorf("%s must read the token from a file (TRUTO_API_TOKEN_FILE), never the environment", name)
	}
	if _, ok := c.Secrets["truto_token"]; !ok || !slices.Contains(w.Secrets, "truto_token") {
		t.Errorf("the token secret is not mounted into %s", name)
	}
	if addr := w.Environment["ORGSYNC_ADMIN_ADDR"]; addr != "" && !loopbackAddr(addr) {
		file := w.Environment["ORGSYNC_ADMIN_TOKEN_FILE"]
		secret, mounted := strings.CutPrefix(file, "/run/secrets/")
		if _, defined := c.Secrets[secret]; !mounted || !defined || !slices.Contains(w.Secrets, secret) {
			t.Errorf("%s's admin endpoint listens on %s without a token from a mounted secret (ORGSYNC_ADMIN_TOKEN_FILE %q)", name, addr, file)
		}
	}
	if _, err := redisconn.Parse(w.Environment["REDIS_URL"]); err != nil {
		t.Errorf("%s: %v", name, err)
	}
}

// TestComposeWorkersProfile: the "workers" profile adds replicated workers
// on the default Redis, each replica's admin port its own on the host.
func TestComposeWorkersProfile(t *testing.T) {
	t.Parallel()
	c := readCompose(t)
	var found bool
	for name, s := range c.Services {
		if !slices.Contains(s.Profiles, "workers") {
			continue
		}
		found = true
		if !s.isWorker() || s.Deploy.Replicas < 2 {
			t.Errorf("%s in profile workers: a worker with deploy.replicas %d; want a worker with at least 2", name, s.Deploy.Replicas)
		}
		if got, want := s.Environment["REDIS_URL"], c.Services["worker"].Environment["REDIS_URL"]; got != want {
			t.Errorf("%s uses REDIS_URL %q; want the default worker's %q (workers share one Redis)", name, got, want)
		}
		if s.DependsOn["redis"].Condition != "service_healthy" {
			t.Errorf("%s does not wait for a healthy redis", name)
		}
		// A fixed host port would be taken by the first replica and refused
		// to the next: a range with a port for each, or none published.
		for _, p := range s.Ports {
			if lo, hi, ok := hostPorts(p); !ok || hi-lo+1 < s.Deploy.Replicas {
				t.Errorf("%s publishes %q for %d replicas: want a host port range with one port per replica", name, p, s.Deploy.Replicas)
			}
		}
	}
	if !found {
		t.Fatal("no service in profile workers")
	}
}

// TestComposeSentinelProfile: the "sentinel" profile is a master (AOF,
// noeviction), its replica, three sentinels monitoring it with a quorum of
// two, and a worker whose REDIS_URL names those three sentinels and the
// master name they monitor, started once they are healthy.
func TestComposeSentinelProfile(t *testing.T) {
	t.Parallel()
	c := readCompose(t)
	var worker string
	for name, s := range c.Services {
		if slices.Contains(s.Profiles, "sentinel") && s.isWorker() {
			worker = name
		}
	}
	if worker == "" {
		t.Fatal("no worker in profile sentinel")
	}
	w := c.Services[worker]
	opt, err := redisconn.Parse(w.Environment["REDIS_URL"])
	f, ok := opt.(asynq.RedisFailoverClientOpt)
	if err != nil || !ok || len(f.SentinelAddrs) != 3 {
		t.Fatalf("%s's REDIS_URL %q (%v): want redis-sentinel:// with three sentinels and ?master=", worker, w.Environment["REDIS_URL"], err)
	}
	monitor := regexp.MustCompile(`(?m)^\s*sentinel monitor (\S+) (\S+) (\d+) (\d+)\s*$`)
	monitored := map[string]bool{} // host:port of the master each sentinel monitors
	for _, addr := range f.SentinelAddrs {
		host, port, _ := net.SplitHostPort(addr)
		s, ok := c.Services[host]
		if !ok || !slices.Contains(s.Profiles, "sentinel") {
			t.Errorf("%s names sentinel %s: no such service in profile sentinel", worker, addr)
			continue
		}
		script := strings.Join(append(slices.Clone(s.Entrypoint), s.Command...), " ")
		if port != "26379" || !strings.Contains(script, "--sentinel") {
			t.Errorf("%s (%s) is not a sentinel on 26379: %q", host, addr, script)
		}
		if s.Hostname != host {
			t.Errorf("%s announces itself as hostname %q; want %q, the name the worker reaches it by", host, s.Hostname, host)
		}
		if s.Healthcheck == nil || !strings.Contains(strings.Join(s.Healthcheck.Test, " "), "ckquorum "+f.MasterName) {
			t.Errorf("%s's health check does not ask for the quorum of %q", host, f.MasterName)
		}
		if w.DependsOn[host].Condition != "service_healthy" {
			t.Errorf("%s does not wait for a healthy %s", worker, host)
		}
		m := monitor.FindStringSubmatch(script)
		if m == nil || m[1] != f.MasterName || m[4] != "2" {
			t.Errorf("%s does not monitor master %q with quorum 2: %q", host, f.MasterName, m)
			continue
		}
		monitored[m[2]+":"+m[3]] = true
	}
	if len(monitored) != 1 {
		t.Fatalf("the sentinels monitor %v; want one master, the same for all", monitored)
	}
	for addr := range monitored {
		host, port, _ := net.SplitHostPort(addr)
		master, ok := c.Services[host]
		if !ok || !slices.Contains(master.Profiles, "sentinel") {
			t.Fatalf("the sentinels monitor %s: no such service in profile sentinel", host)
		}
		checkDurableRedis(t, host, master)
		replicas := 0
		for name, s := range c.Services {
			if strings.Contains(strings.Join(s.Command, " "), "--replicaof "+host+" "+port) {
				replicas++
				checkDurableRedis(t, name, s)
			}
		}
		if replicas == 0 {
			t.Errorf("no replica of %s: a failover would have nothing to promote", addr)
		}
	}
}

// hostPorts reads the host port, or range of them, of a published port
// 127.0.0.1:HOST[-HOST]:CONTAINER.
func hostPorts(p string) (lo, hi int, ok bool) {
	f := strings.Split(p, ":")
	if len(f) != 3 {
		return 0, 0, false
	}
	a, b, isRange := strings.Cut(f[1], "-")
	lo, err1 := strconv.Atoi(a)
	hi, err2 := lo, error(nil)
	if isRange {
		hi, err2 = strconv.Atoi(b)
	}
	return lo, hi, err1 == nil && err2 == nil && lo > 0 && hi >= lo
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
