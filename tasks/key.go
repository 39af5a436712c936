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

// TaskID is the asynq task id of the update with idempotency key key. The key
// is the update's identity; the id is a fixed-length, Redis-key-safe digest of it.
func TaskID(key string) string {
	sum := sha256.Sum256([]byte(key))
	return "u_" + hex.EncodeToString(sum[:16])
}
