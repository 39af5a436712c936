// Command bench measures what an update costs orgsync, next to bare asynq
// doing the same job in the same run, and prints the figures as a Markdown
// table (the README's Performance section is this output). It starts its own
// redis-server (a fresh one per measurement) and an in-process fake Truto
// with 1 ms latency and no limits or faults, so Truto is never the bottleneck.
//
//	go run ./cmd/bench                      # everything, about 5 minutes on 2 cores
//	go run ./cmd/bench --million 0          # without the 1,000,000-line runs
//
// Progress goes to stderr; the table to stdout.
package main

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/orgsync/orgsync/internal/bench"
	"github.com/orgsync/orgsync/trutoclient/trutotest"
)

// token is the fake's API token; nothing secret.
const token = "tok_bench_5b1c9e"

type settings struct {
	updates     int
	lines       int
	memory      int
	million     int
	bodyBytes   int
	concurrency int
	accounts    int
}

func main() {
	if os.Getenv(childEnv) != "" {
		os.Exit(child())
	}
	var s settings
	fs := flag.NewFlagSet("bench", flag.ExitOnError)
	fs.IntVar(&s.updates, "updates", 5000, "updates through the pipeline, per side")
	fs.IntVar(&s.lines, "lines", 20000, "lines enqueued, per side")
	fs.IntVar(&s.memory, "memory", 20000, "updates kept to measure Redis bytes per retained update (the README's figure used 100000)")
	fs.IntVar(&s.million, "million", 1_000_000, "lines of the large bulk enqueue whose peak RSS is measured (0 skips it)")
	fs.IntVar(&s.bodyBytes, "body-bytes", 1024, "size of each update's body in the memory measurement")
	fs.IntVar(&s.concurrency, "concurrency", 50, "worker concurrency, both sides")
	fs.IntVar(&s.accounts, "accounts", 50, "integrated accounts the updates spread over")
	_ = fs.Parse(os.Args[1:])
	if err := run(s, os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

// row is one line of the table.
type row struct{ figure, orgsync, bare, ratio string }

func run(s settings, stdout, stderr io.Writer) error {
	ctx := context.Background()
	say := func(format string, args ...any) { fmt.Fprintf(stderr, format+"\n", args...) }
	var rows []row
	var redisVersion string

	say("enqueue: %d lines per side", s.lines)
	enq, err := measureEnqueue(ctx, s)
	if err != nil {
		return err
	}
	redisVersion = enq.redisVersion
	rows = append(rows,
		row{fmt.Sprintf("enqueue, lines/s (%d lines)", s.lines), fmt.Sprintf("%.0f (`EnqueueLines`, batches of 500); %.0f recording a run", enq.batched, enq.run),
			fmt.Sprintf("%.0f (a loop of `Client.Enqueue`)", enq.bare), fmt.Sprintf("%.1fx", enq.batched/enq.bare)})

	say("pipeline: %d updates per side at concurrency %d", s.updates, s.concurrency)
	pipe, err := measurePipeline(ctx, s)
	if err != nil {
		return err
	}
	o, b := pipe.orgsync, pipe.bare
	rows = append(rows,
		row{fmt.Sprintf("updates/s, concurrency %d (worker start to last completion)", s.concurrency), fmt.Sprintf("%.0f", o.rate), fmt.Sprintf("%.0f", b.rate), fmt.Sprintf("%.2f", o.rate/b.rate)},
		row{"Redis commands per applied update, enqueue included", fmt.Sprintf("%.1f", o.cmds), fmt.Sprintf("%.1f", b.cmds), fmt.Sprintf("%.1fx", o.cmds/b.cmds)},
		row{"Redis round trips (read events) per applied update, enqueue included", fmt.Sprintf("%.1f", o.trips), fmt.Sprintf("%.1f", b.trips), fmt.Sprintf("%.1fx", o.trips/b.trips)},
		row{"Redis CPU per applied update, enqueue included", micros(o.redisCPU), micros(b.redisCPU), fmt.Sprintf("%.1fx", float64(o.redisCPU)/float64(b.redisCPU))})
	if o.goCPU > 0 && b.goCPU > 0 {
		rows = append(rows, row{"Go CPU per applied update (producer, worker and fake, in this process), enqueue included",
			micros(o.goCPU), micros(b.goCPU), fmt.Sprintf("%.1fx", float64(o.goCPU)/float64(b.goCPU))})
	}

	say("memory: %d updates per side with a %d-byte body", s.memory, s.bodyBytes)
	mem, err := measureMemory(ctx, s)
	if err != nil {
		return err
	}
	say("   orgsync's bytes per update by key: %s", mem.breakdown)
	rows = append(rows, row{fmt.Sprintf("Redis bytes per retained update (%d-byte body, %d-byte response, 7-day retention)", s.bodyBytes, mem.response),
		fmt.Sprintf("%.0f", mem.orgsync), fmt.Sprintf("%.0f (task kept with `Retention`, no result)", mem.bare), fmt.Sprintf("%.1fx", mem.orgsync/mem.bare)})

	if s.million > 0 {
		say("large enqueue: %d lines through `enqueue bulk`, then through `EnqueueMany`", s.million)
		big, err := measureMillion(ctx, s)
		if err != nil {
			return err
		}
		rows = append(rows,
			row{fmt.Sprintf("`enqueue bulk` of %d lines: seconds, peak RSS", s.million), fmt.Sprintf("%.0f s (%.0f lines/s), %.0f MiB", big.bulkSeconds, float64(s.million)/big.bulkSeconds, big.bulkRSS), "", ""},
			row{fmt.Sprintf("`Producer.EnqueueMany` of %d updates (10,000 per call): seconds, peak RSS", s.million), fmt.Sprintf("%.0f s, %.0f MiB", big.manySeconds, big.manyRSS), "", ""})
	}

	fmt.Fprintf(stdout, "Measured %s on %s (%d CPUs, %s), redis-server %s, %s; a fresh redis-server per measurement, the fake Truto in process (1 ms latency, no limits), %d accounts.\n\n",
		time.Now().UTC().Format("2006-01-02"), cpuModel(), runtime.NumCPU(), runtime.GOOS+"/"+runtime.GOARCH, redisVersion, runtime.Version(), s.accounts)
	fmt.Fprintln(stdout, "| figure | orgsync | bare asynq, same run | ratio |")
	fmt.Fprintln(stdout, "|---|---|---|---|")
	for _, r := range rows {
		fmt.Fprintf(stdout, "| %s | %s | %s | %s |\n", r.figure, r.orgsync, r.bare, r.ratio)
	}
	return nil
}

// micros renders d in microseconds.
func micros(d time.Duration) string {
	return fmt.Sprintf("%.0f µs", float64(d)/float64(time.Microsecond))
}

// newFake starts the fake Truto: 1 ms latency, no limits, no faults, no
// request log (its counts stay exact).
func newFake() *trutotest.Server {
	return trutotest.NewServer(token, trutotest.WithFaults(trutotest.Faults{Latency: trutotest.Duration(time.Millisecond)}),
		trutotest.WithMaxRecorded(0), trutotest.WithSeed(1))
}

// withRedis runs fn against a fresh redis-server.
func withRedis(fn func(r *bench.Redis) error) error {
	r, err := bench.StartRedis()
	if err != nil {
		return err
	}
	defer r.Stop()
	return fn(r)
}

// waitUntil polls cond every 2 ms until it holds, or fails after stall
// without progress (progress reports how far along it is).
func waitUntil(what string, stall time.Duration, progress func() int64, done func() bool) error {
	last, lastMove := int64(-1), time.Now()
	for !done() {
		if p := progress(); p != last {
			last, lastMove = p, time.Now()
		} else if time.Since(lastMove) > stall {
			return fmt.Errorf("%s: stalled for %s at %d", what, stall, p)
		}
		time.Sleep(2 * time.Millisecond) // polling a condition
	}
	return nil
}

// cpuModel is the machine's CPU model, from /proc/cpuinfo.
func cpuModel() string {
	b, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return "unknown CPU"
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "model name"); ok {
			return strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(v), ":"))
		}
	}
	return "unknown CPU"
}

// childRSS runs cmd and returns its wall time and peak RSS in MiB: the
// high-water mark the kernel keeps for it (VmHWM), read every 50 ms while it
// runs. (wait4's ru_maxrss would do, but Linux starts a child's at its
// parent's size, and this parent is large.)
func childRSS(cmd *exec.Cmd) (time.Duration, float64, error) {
	var errb bytes.Buffer
	cmd.Stderr = &errb
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return 0, 0, err
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	status := fmt.Sprintf("/proc/%d/status", cmd.Process.Pid)
	var hwm float64
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case err := <-done:
			if err != nil {
				return 0, 0, fmt.Errorf("%s: %w\n%s", filepath.Base(cmd.Path), err, tail(errb.String(), 2000))
			}
			return time.Since(start), hwm, nil
		case <-tick.C:
			if kb, ok := vmHWM(status); ok {
				hwm = max(hwm, kb/1024)
			}
		}
	}
}

// vmHWM reads the VmHWM line (KiB) of a /proc status file.
func vmHWM(path string) (float64, bool) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, false
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			f, err := strconv.ParseFloat(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 64)
			return f, err == nil
		}
	}
	return 0, false
}

func tail(s string, n int) string {
	if len(s) > n {
		return "..." + s[len(s)-n:]
	}
	return s
}
