package worker

import (
	"os"
	"testing"

	"github.com/orgsync/orgsync/internal/testrig"
)

// TestMain runs four of the package's parallel tests at once (unless
// -parallel says otherwise, or -race is on): most of their time is spent
// waiting on an outage, a rate limit's window or a lease, not on the CPU, and
// at the default of GOMAXPROCS a 2-core machine ran them two by two (70 s
// under load, 41 s four at a time).
func TestMain(m *testing.M) {
	testrig.ParallelAtLeast(4)
	os.Exit(m.Run())
}
