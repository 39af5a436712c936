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

// TestSentinelPasswords: sentinels, master and replica asking for two
// different passwords are reached with the ones URL and Client carry (the
// master's as user-info, the sentinels' as sentinel_password=), refuse a
// client without them, and still fail over (the sentinels give the master's
// password to the replica they promote).
func TestSentinelPasswords(t *testing.T) {
	t.Parallel()
	const sentinelPW, dataPW = "S3nt!nel+pw", "D4ta!pw"
	s := StartSentinel(t, SentinelPassword(sentinelPW), DataPassword(dataPW))
	if u := s.URL(); !strings.HasPrefix(u, "redis-sentinel://:D4ta%21pw@") ||
		!strings.HasSuffix(u, "?master="+SentinelMaster+"&sentinel_password=S3nt%21nel%2Bpw") {
		t.Errorf("URL %q: want the master's password as user-info and the sentinels' as sentinel_password=", u)
	}
	ctx := context.Background()
	c := s.Client()
	if err := c.Set(ctx, "k", "v", 0).Err(); err != nil {
		t.Fatal(err)
	}
	for _, addr := range []string{s.Sentinels()[0].Addr, s.Master().Addr, s.Replica().Addr} {
		plain := redis.NewClient(&redis.Options{Addr: addr})
		if err := plain.Ping(ctx).Err(); err == nil || !strings.Contains(err.Error(), "NOAUTH") {
			t.Errorf("%s answered PING without a password: %v", addr, err)
		}
		plain.Close()
	}
	if n, err := s.Master().Client().Do(ctx, "WAIT", 1, 5000).Int(); err != nil || n != 1 {
		t.Fatalf("WAIT for the replica: %d, %v", n, err)
	}
	s.KillMaster()
	s.WaitForPromotion(30 * time.Second)
	if v, err := c.Get(ctx, "k").Result(); err != nil || v != "v" {
		t.Errorf("after the failover k = %q, %v; want v", v, err)
	}
}
