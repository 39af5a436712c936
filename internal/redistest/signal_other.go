//go:build !unix

package redistest

import "os"

// No SIGSTOP here: Pause skips the test, Resume does nothing.
var sigStop, sigCont os.Signal
