package tasks

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"time"

	"github.com/orgsync/orgsync/internal/admission"
	"github.com/redis/go-redis/v9"
)

// Ordering: updates to the same organization (same account and id) apply in
// the order they were enqueued, and never two at once. Each organization has
// a line in admission, scored by a sequence number taken at enqueue; only its
// head is ever admitted, and the next one becomes ready when the head
// completes or is dead-lettered, so a dead update never blocks its
// successors. A replay joins the end of the line but keeps its origin (the
// place its first enqueue took), which the stale-replay guard compares.

func orderTag(account, id string) string {
	sum := sha256.Sum256([]byte(account + "\x00" + id))
	return "o_" + hex.EncodeToString(sum[:12])
}

// Lines is the organizations' lines (Store.Lines): where an update joins
// its organization's line in admission, and the newest sequence number
// applied to each organization, which the stale-replay guard compares.
type Lines struct{ *base }

// add puts the update of payload pl in admission, in its account's lane
// behind its organization's earlier updates; false when admission holds it
// already (waiting, admitted or running).
func (s *Lines) add(ctx context.Context, pl Payload, queue string, notBefore time.Time) (bool, error) {
	pl.OrderSeq = 0 // admission gives the update its place in line
	b, err := EncodePayload(pl)
	if err != nil {
		return false, fmt.Errorf("encode payload: %w", err)
	}
	seq, err := s.adm.Add(ctx, admission.Item{ID: pl.TaskID(), Account: pl.IntegratedAccountID, Org: orgKey(pl.Update),
		Queue: queue, NotBefore: notBefore, Payload: b, Origin: pl.OriginSeq})
	return seq != 0, err
}

// lastAppliedTTL bounds how long an organization's last applied sequence
// number is kept after its last change: the stale-replay guard needs it only
// while a dead letter of the organization may still be replayed.
const lastAppliedTTL = 90 * 24 * time.Hour

func (s *Lines) lastKey(account, id string) string {
	return s.prefix + ":{" + orderTag(account, id) + "}:last_applied"
}

// setLastApplied records origin as the organization's newest applied
// sequence number, if it is the highest.
var setLastApplied = redis.NewScript(`
local c = tonumber(redis.call('GET', KEYS[1]) or '0')
if tonumber(ARGV[1]) > c then redis.call('SET', KEYS[1], ARGV[1]) end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1`)

// noteAppliedIn queues, in pipe, a note that the update of origin was
// applied to its organization (kept if it is the newest).
func (s *Lines) noteAppliedIn(ctx context.Context, pipe redis.Pipeliner, u Update, origin int64) {
	if origin > 0 {
		setLastApplied.EvalSha(ctx, pipe, []string{s.lastKey(u.IntegratedAccountID, u.ID)}, origin, lastAppliedTTL.Milliseconds())
	}
}

// LastApplied returns the sequence number of the newest update applied to
// the organization (0 when none is known).
func (s *Lines) LastApplied(ctx context.Context, account, id string) (int64, error) {
	n, err := s.rdb.Get(ctx, s.lastKey(account, id)).Int64()
	if errors.Is(err, redis.Nil) {
		return 0, nil
	}
	return n, err
}

// newerThan describes an update of u's organization newer than origin that
// has been applied, or is waiting, admitted or running ("" when there is
// none): replaying an update of that origin would then overwrite newer data.
func (s *Lines) newerThan(ctx context.Context, u Update, taskID string, origin int64) (string, error) {
	last, err := s.LastApplied(ctx, u.IntegratedAccountID, u.ID)
	if err != nil {
		return "", err
	}
	if last > origin {
		return "has been applied since this one died", nil
	}
	line, err := s.adm.Line(ctx, u.IntegratedAccountID, orgKey(u))
	if err != nil {
		return "", fmt.Errorf("read the line of organization %s: %w", u.ID, err)
	}
	for _, p := range line {
		if p.ID != taskID && p.Origin > origin {
			return "is queued (" + p.ID + ") and would apply before this one", nil
		}
	}
	return "", nil
}
