// Package bench holds what orgsync's benchmarks run against and compare
// with: a private redis-server, Redis's own counts (commands, memory), and
// the bare-asynq baseline (a plain asynq client and server whose handler only
// sends the PATCH). cmd/bench and the go test benchmarks use it.
package bench

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// Redis is a private redis-server on a free loopback port, without
// persistence and without eviction.
type Redis struct {
	Addr string
	dir  string
	cmd  *exec.Cmd
}

// StartRedis starts a redis-server in a fresh temporary directory.
func StartRedis() (*Redis, error) {
	if _, err := exec.LookPath("redis-server"); err != nil {
		return nil, errors.New("redis-server is not on PATH: install it (Debian: apt-get install redis-server)")
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("find a free port: %w", err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	_ = l.Close()
	dir, err := os.MkdirTemp("", "orgsync-bench-redis")
	if err != nil {
		return nil, err
	}
	r := &Redis{Addr: "127.0.0.1:" + strconv.Itoa(port), dir: dir}
	r.cmd = exec.Command("redis-server", "--port", strconv.Itoa(port), "--bind", "127.0.0.1", "--dir", dir,
		"--save", "", "--appendonly", "no", "--daemonize", "no", "--logfile", filepath.Join(dir, "redis.log"),
		"--maxmemory-policy", "noeviction")
	if err := r.cmd.Start(); err != nil {
		_ = os.RemoveAll(dir)
		return nil, fmt.Errorf("start redis-server: %w", err)
	}
	c := r.Client()
	defer c.Close()
	deadline := time.Now().Add(10 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		err := c.Ping(ctx).Err()
		cancel()
		if err == nil {
			return r, nil
		}
		if time.Now().After(deadline) {
			r.Stop()
			return nil, fmt.Errorf("redis-server on %s did not answer within 10s: %w", r.Addr, err)
		}
		time.Sleep(20 * time.Millisecond) // polling a condition: the server coming up
	}
}

// URL is the REDIS_URL of the server.
func (r *Redis) URL() string { return "redis://" + r.Addr + "/0" }

// Client returns a new client for the server; the caller closes it.
func (r *Redis) Client() *redis.Client { return redis.NewClient(&redis.Options{Addr: r.Addr}) }

// Stop kills the server and removes its directory.
func (r *Redis) Stop() {
	if r.cmd != nil && r.cmd.Process != nil {
		_ = r.cmd.Process.Kill()
		_ = r.cmd.Wait()
	}
	_ = os.RemoveAll(r.dir)
}

// Version is the server's redis_version.
func Version(ctx context.Context, rdb redis.UniversalClient) string {
	info, _ := rdb.Info(ctx, "server").Result()
	return InfoFields(info)["redis_version"]
}

// Calls is Redis's count of calls of every command (INFO commandstats),
// INFO itself left out.
func Calls(ctx context.Context, rdb redis.UniversalClient) (map[string]int64, error) {
	info, err := rdb.Info(ctx, "commandstats").Result()
	if err != nil {
		return nil, fmt.Errorf("INFO commandstats: %w", err)
	}
	out := map[string]int64{}
	for _, line := range strings.Split(info, "\n") {
		name, rest, ok := strings.Cut(line, ":calls=")
		if !ok || strings.HasPrefix(line, "cmdstat_info:") {
			continue
		}
		n, _, _ := strings.Cut(rest, ",")
		v, err := strconv.ParseInt(n, 10, 64)
		if err != nil {
			return nil, fmt.Errorf("INFO commandstats line %q: %w", line, err)
		}
		out[strings.TrimPrefix(name, "cmdstat_")] = v
	}
	return out, nil
}

// CallsSince is how many commands ran since before was taken.
func CallsSince(before, after map[string]int64) int64 {
	var n int64
	for k, v := range after {
		n += v - before[k]
	}
	return n
}

// Load is what a Redis server has done so far: commands run, CPU spent,
// and read events processed (one per batch of commands a client sends: a
// round trip, or a pipeline).
type Load struct {
	Calls map[string]int64
	CPU   time.Duration // used_cpu_user + used_cpu_sys
	Reads int64         // total_reads_processed
}

// LoadOf samples rdb's Load.
func LoadOf(ctx context.Context, rdb redis.UniversalClient) (Load, error) {
	calls, err := Calls(ctx, rdb)
	if err != nil {
		return Load{}, err
	}
	info, err := rdb.Info(ctx, "cpu", "stats").Result()
	if err != nil {
		return Load{}, fmt.Errorf("INFO cpu stats: %w", err)
	}
	l := Load{Calls: calls}
	fields := InfoFields(info)
	for _, f := range []string{"used_cpu_user", "used_cpu_sys"} {
		v, err := strconv.ParseFloat(fields[f], 64)
		if err != nil {
			return Load{}, fmt.Errorf("INFO %s: %w", f, err)
		}
		l.CPU += time.Duration(v * float64(time.Second))
	}
	if l.Reads, err = strconv.ParseInt(fields["total_reads_processed"], 10, 64); err != nil {
		return Load{}, fmt.Errorf("INFO total_reads_processed: %w", err)
	}
	return l, nil
}

// Per is the load between before and l, per unit of work (n of them):
// commands, CPU and read events each divided by n.
func (l Load) Per(before Load, n int) (calls float64, cpu time.Duration, reads float64) {
	return float64(CallsSince(before.Calls, l.Calls)) / float64(n), (l.CPU - before.CPU) / time.Duration(n),
		float64(l.Reads-before.Reads) / float64(n)
}

// UsedMemory is Redis's used_memory in bytes.
func UsedMemory(ctx context.Context, rdb redis.UniversalClient) (int64, error) {
	info, err := rdb.Info(ctx, "memory").Result()
	if err != nil {
		return 0, fmt.Errorf("INFO memory: %w", err)
	}
	return strconv.ParseInt(InfoFields(info)["used_memory"], 10, 64)
}

// InfoFields reads the key:value lines of an INFO (or CLUSTER INFO) answer.
func InfoFields(info string) map[string]string {
	f := map[string]string{}
	for _, l := range strings.Split(info, "\n") {
		if k, v, ok := strings.Cut(strings.TrimSpace(l), ":"); ok && !strings.HasPrefix(k, "#") {
			f[k] = v
		}
	}
	return f
}
