// Command bodyprobe measures the client's peak memory against a hostile upstream: it sends
// concurrent UpdateOrganization calls to a local server that answers every one with a huge 2xx
// body, and prints the process's peak resident set size (VmHWM). Linux only.
//
//	go run ./trutoclient/internal/bodyprobe -n 30 -size 60000000 [-chunked]
package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"strconv"
	"strings"
	"sync"

	"github.com/orgsync/orgsync/trutoclient"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "bodyprobe:", err)
		os.Exit(1)
	}
}

func run() error {
	n := flag.Int("n", 30, "concurrent calls")
	size := flag.Int64("size", 60_000_000, "bytes in each 2xx body")
	chunked := flag.Bool("chunked", false, "send no Content-Length (chunked encoding)")
	flag.Parse()

	// The server streams its body from one small chunk, so the peak is the client's.
	chunk := []byte(`{"id":"org","remote_data":{"pad":"` + strings.Repeat("x", 64<<10) + `"}}`)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		if !*chunked {
			w.Header().Set("Content-Length", strconv.FormatInt(*size, 10))
		}
		w.WriteHeader(http.StatusOK)
		for left := *size; left > 0; {
			k := min(left, int64(len(chunk)))
			if _, err := w.Write(chunk[:k]); err != nil {
				return // the client stopped reading
			}
			left -= k
		}
	}))
	defer srv.Close()

	c, err := trutoclient.New("probe-token", trutoclient.WithBaseURL(srv.URL), trutoclient.WithMaxConnsPerHost(*n))
	if err != nil {
		return err
	}
	before, err := peakRSS()
	if err != nil {
		return err
	}
	var wg sync.WaitGroup
	results := make([]string, *n)
	for i := range *n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, resp, err := c.UpdateOrganization(context.Background(), &trutoclient.UpdateOrganizationRequest{
				ID: "org-" + strconv.Itoa(i), IntegratedAccountID: "acc", Body: []byte(`{}`),
			})
			d := trutoclient.Classify(resp, err)
			kept := 0
			if resp != nil {
				kept = len(resp.Body)
			}
			results[i] = fmt.Sprintf("%s, %d bytes kept", d.Class, kept)
		}()
	}
	wg.Wait()
	after, err := peakRSS()
	if err != nil {
		return err
	}
	counts := map[string]int{}
	for _, r := range results {
		counts[r]++
	}
	fmt.Printf("%d calls x %d-byte 2xx bodies (chunked %t): peak RSS %d MiB before the calls, %d MiB after; outcomes %v\n",
		*n, *size, *chunked, before>>10, after>>10, counts)
	return nil
}

// peakRSS returns VmHWM in KiB.
func peakRSS() (int64, error) {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return 0, err
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		if v, ok := strings.CutPrefix(s.Text(), "VmHWM:"); ok {
			return strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
		}
	}
	return 0, errors.New("no VmHWM in /proc/self/status")
}
