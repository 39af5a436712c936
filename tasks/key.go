package tasks

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"strconv"
)

// NewKey returns a fresh random idempotency key for an update whose caller gave none.
func NewKey() string {
	var b [16]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails on supported platforms
	return "os_" + hex.EncodeToString(b[:])
}

// RunKey derives the idempotency key of line number lineNo of a bulk file run
// under name run, from the line's content. Re-running the same file with the
// same run name yields the same keys, so nothing is enqueued or applied twice;
// the same content on two lines yields two keys, because two lines are two intents.
func RunKey(run string, lineNo int, content []byte) string {
	h := sha256.New()
	h.Write([]byte(run))
	h.Write([]byte{0})
	h.Write([]byte(strconv.Itoa(lineNo)))
	h.Write([]byte{0})
	h.Write(content)
	return "run_" + hex.EncodeToString(h.Sum(nil)[:20])
}

// An idempotency key belongs to its integrated account: two accounts may use
// the same key for two different updates. The task id and the key sent to
// Truto are therefore digests of the pair, each under its own domain string
// so that neither can be computed from the other.
const (
	taskIDDomain      = "orgsync task id v2"
	upstreamKeyDomain = "orgsync idempotency key v2"
)

// TaskID is the asynq task id of the update of integrated account account
// with idempotency key key: the pair is the update's identity, and the id a
// fixed-length, Redis-key-safe digest of it.
func TaskID(account, key string) string {
	return "u_" + hex.EncodeToString(pairDigest(taskIDDomain, account, key)[:16])
}

// UpstreamKey is the Idempotency-Key sent to Truto for the update of account
// with key. Truto scopes keys per API token, not per account, so the caller's
// key is never sent as is: the digest of the pair keeps two accounts' keys
// apart, has a fixed length, and is the same on every attempt and replay.
func UpstreamKey(account, key string) string {
	return "osk_" + hex.EncodeToString(pairDigest(upstreamKeyDomain, account, key))
}

// LegacyTaskID is the task id of a version-1 payload, which was the digest of
// the key alone. Workers and lookups still use it for such tasks, their
// ledger entries and their dead letters.
func LegacyTaskID(key string) string {
	sum := sha256.Sum256([]byte(key))
	return "u_" + hex.EncodeToString(sum[:16])
}

// pairDigest hashes domain, account and key unambiguously: the account is
// length-prefixed, so no two pairs give the same input.
func pairDigest(domain, account, key string) []byte {
	h := sha256.New()
	h.Write([]byte(domain))
	h.Write([]byte{0})
	h.Write([]byte(strconv.Itoa(len(account))))
	h.Write([]byte{':'})
	h.Write([]byte(account))
	h.Write([]byte(key))
	return h.Sum(nil)
}

// isTaskIDForm reports whether ref has the form of a task id ("u_" and 32
// lowercase hex digits). An idempotency key can have that form too.
func isTaskIDForm(ref string) bool {
	if len(ref) != 34 || ref[:2] != "u_" {
		return false
	}
	for i := 2; i < len(ref); i++ {
		if c := ref[i]; (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}
