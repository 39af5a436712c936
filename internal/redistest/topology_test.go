package redistest

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// TestStartCluster: three masters, each serving a third of the slots; keys
// written through the cluster client land on every one of them, and each
// node's figures count them.
func TestStartCluster(t *testing.T) {
	t.Parallel()
	c := StartCluster(t, 3)
	ctx := context.Background()
	if u := c.URL(); !strings.HasPrefix(u, "redis-cluster://") || strings.Count(u, ",") != 2 {
		t.Errorf("URL %q: want redis-cluster:// and three addresses", u)
	}
	cc := c.Client()
	const n = 300
	for i := range n {
		if err := cc.Set(ctx, fmt.Sprintf("k%d", i), "v", 0).Err(); err != nil {
			t.Fatal(err)
		}
	}
	var keys int64
	for _, m := range c.Masters() {
		st, err := m.Stats(ctx)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("%s: %d keys, used_memory %d, %d commands (%d SET)", st.Addr, st.Keys, st.UsedMemory, st.CommandsProcessed, st.Calls["set"])
		if st.Keys < n/6 || st.Calls["set"] != st.Keys || st.UsedMemory <= 0 {
			t.Errorf("%s holds %d keys after %d SETs (used_memory %d); want about a third of %d, one SET each", st.Addr, st.Keys, st.Calls["set"], st.UsedMemory, n)
		}
		keys += st.Keys
	}
	if keys != n {
		t.Errorf("the masters hold %d keys together; want %d", keys, n)
	}
}

// TestStartSentinel: a write the replica acknowledged survives the master's
// kill -9, the replica is promoted, and the failover client writes to it.
func TestStartSentinel(t *testing.T) {
	t.Parallel()
	s := StartSentinel(t, DataOptions(WithAOF()))
	ctx := context.Background()
	if u := s.URL(); !strings.HasPrefix(u, "redis-sentinel://") || !strings.HasSuffix(u, "?master="+SentinelMaster) {
		t.Errorf("URL %q", u)
	}
	c := s.Client()
	if err := c.Set(ctx, "before", "1", 0).Err(); err != nil {
		t.Fatal(err)
	}
	if n, err := s.Master().Client().Do(ctx, "WAIT", 1, 5000).Int(); err != nil || n != 1 {
		t.Fatalf("WAIT for the replica: %d, %v", n, err)
	}
	old, replica := s.KillMaster(), s.Replica()
	killed := time.Now()
	promoted := s.WaitForPromotion(30 * time.Second)
	t.Logf("promoted %s %s after the kill", promoted.Addr, time.Since(killed).Round(10*time.Millisecond))
	if promoted != replica || s.Master() != replica || s.Replica() != old {
		t.Fatalf("promoted %s; want the replica %s", promoted.Addr, replica.Addr)
	}
	if a, err := s.MasterAddr(ctx); err != nil || a != replica.Addr {
		t.Errorf("MasterAddr = %s, %v; want %s", a, err, replica.Addr)
	}
	if v, err := c.Get(ctx, "before").Result(); err != nil || v != "1" {
		t.Errorf("after the failover before = %q, %v; want 1", v, err)
	}
	if err := c.Set(ctx, "after", "2", 0).Err(); err != nil {
		t.Errorf("write after the failover: %v", err)
	}
}

// TestSentinelPassword: sentinels asking for a password are reached with
// the one URL and Client carry, and refuse a client without it.
func TestSentinelPassword(t *testing.T) {
	t.Parallel()
	const pw = "S3cr3t!pw"
	s := StartSentinel(t, SentinelPassword(pw))
	if !strings.Contains(s.URL(), ":S3cr3t%21pw@") {
		t.Errorf("URL %q does not carry the password", s.URL())
	}
	ctx := context.Background()
	if err := s.Client().Set(ctx, "k", "v", 0).Err(); err != nil {
		t.Fatal(err)
	}
	plain := redis.NewClient(&redis.Options{Addr: s.Sentinels()[0].Addr})
	defer plain.Close()
	if err := plain.Ping(ctx).Err(); err == nil || !strings.Contains(err.Error(), "NOAUTH") {
		t.Errorf("a sentinel answered PING without the password: %v", err)
	}
}
