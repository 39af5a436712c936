package tasks

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
)

// maxKeyAccounts bounds how many accounts a lookup by key alone considers.
const maxKeyAccounts = 100

// keyIndexKey is the set of the integrated accounts that used key. Each key
// has its own hash tag: the index is only ever read one key at a time.
func (s *Ledger) keyIndexKey(key string) string {
	sum := sha256.Sum256([]byte(key))
	return s.prefix + ":{key:" + hex.EncodeToString(sum[:16]) + "}:accounts"
}

// noteKey records that account used key, for `enqueue status KEY`. The
// record lasts the result retention plus the default wall-clock budget after
// the key's last enqueue or dead letter: as long as its update can be waiting,
// then retained. Older dead letters are found with the account given.
func (s *Ledger) noteKey(ctx context.Context, account, key string) error {
	k := s.keyIndexKey(key)
	pipe := s.rdb.TxPipeline()
	pipe.SAdd(ctx, k, account)
	pipe.Expire(ctx, k, s.ttl+DefaultMaxAge)
	if _, err := pipe.Exec(ctx); err != nil {
		return fmt.Errorf("index idempotency key: %w", err)
	}
	return nil
}

// keyAccounts lists (some of) the accounts that used key recently.
func (s *Ledger) keyAccounts(ctx context.Context, key string) ([]string, error) {
	accounts, _, err := s.rdb.SScan(ctx, s.keyIndexKey(key), 0, "", maxKeyAccounts).Result()
	if err != nil {
		return nil, fmt.Errorf("read the accounts of idempotency key %q: %w", key, err)
	}
	return accounts, nil
}
