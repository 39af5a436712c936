// Package trutoclient is orgsync's client for Truto's Update Organization call
// (PATCH /unified/user-directory/organizations/{id}).
//
// It owns request building (path escaping, query encoding, headers, the
// Idempotency-Key), bounded reading of responses, the typed errors a non-2xx
// answer turns into, and Classify, the one place where an attempt's outcome is
// mapped to orgsync's failure policy. It makes exactly one attempt per call:
// retrying, waiting and parking accounts belong to the caller.
package trutoclient
