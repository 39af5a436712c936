package redisconn

import (
	"context"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/orgsync/orgsync/internal/redistest"
	"github.com/orgsync/orgsync/internal/testrig"
)

// TestOpenWrongKindOfServer points each URL form at the wrong kind of real
// server (or at sentinels that do not know the master asked for), with a
// password in the URL (the sentinels' as sentinel_password=), and wants an
// error that says what is there and what to write instead, without the
// password. A redis-sentinel:// URL at a plain server gives its user-info
// password, the one a master would take, and not the sentinels'.
func TestOpenWrongKindOfServer(t *testing.T) {
	t.Parallel()
	const pw = "S3cr3t!pw"
	userinfo := url.UserPassword("", pw).String() + "@"
	sentinelPW := "&sentinel_password=" + url.QueryEscape(pw)
	plain := redistest.Start(t, redistest.WithPassword(pw))
	sen := redistest.StartSentinel(t, redistest.SentinelPassword(pw))
	sentinel := sen.Sentinels()[0].Addr
	var sentinels []string
	for _, s := range sen.Sentinels() {
		sentinels = append(sentinels, s.Addr)
	}
	cluster := redistest.StartCluster(t, 3)
	node := cluster.Masters()[1].Addr

	tests := []struct {
		name, raw string
		want      []string
	}{
		{"cluster URL, single server", "redis-cluster://" + userinfo + plain.Addr,
			[]string{"REDIS_URL redis-cluster://:xxxxx@" + plain.Addr + " names a Redis Cluster, but " + plain.Addr +
				" is not a Cluster node (cluster support disabled): use redis://" + plain.Addr}},
		{"cluster URL, a Sentinel", "redis-cluster://" + userinfo + sentinel,
			[]string{"names a Redis Cluster, but " + sentinel + " is a Sentinel: use redis-sentinel://" + sentinel + `?master=NAME (it monitors "orgsync")`}},
		{"sentinel URL, unknown master", "redis-sentinel://" + strings.Join(sentinels, ",") + "?master=nosuch" + sentinelPW,
			[]string{`asks for master "nosuch", but the Sentinels at `, `do not know a master of that name (they monitor: "orgsync")`,
				"set ?master= to the name in their `sentinel monitor` line"}},
		{"sentinel URL, single server", "redis-sentinel://" + userinfo + plain.Addr + "?master=orgsync",
			[]string{"names Sentinels, but " + plain.Addr + " is not one (a Redis server): use redis://" + plain.Addr}},
		{"sentinel URL, Cluster node", "redis-sentinel://" + node + "?master=orgsync",
			[]string{"names Sentinels, but " + node + " is not one (a Redis Cluster node): use redis-cluster://" + node}},
		{"plain URL, a Sentinel", "redis://" + userinfo + sentinel + "/0",
			[]string{"REDIS_URL redis://:xxxxx@" + sentinel + "/0 names a single Redis server, but " + sentinel +
				` is a Sentinel: use redis-sentinel://` + sentinel + `?master=NAME (it monitors "orgsync")`}},
		{"plain URL, Cluster node", "redis://" + node + "/0",
			[]string{"names a single Redis server, but " + node + " is a node of a Redis Cluster of 3 masters: use redis-cluster://" + node}},
		{"sentinel URL without a master", "redis-sentinel://" + userinfo + sentinel,
			[]string{"no master name: add ?master=NAME"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			rdb, err := Open(context.Background(), tt.raw, 5*time.Second)
			if err == nil {
				rdb.Close()
				t.Fatalf("Open(%s) succeeded; want an error", Redact(tt.raw))
			}
			msg := err.Error()
			t.Log(msg)
			for _, s := range []string{pw, url.QueryEscape(pw), url.PathEscape(pw), "S3cr3t"} {
				if strings.Contains(msg, s) {
					t.Errorf("the error shows the password (as %q): %s", s, msg)
				}
			}
			for _, w := range tt.want {
				if !strings.Contains(msg, w) {
					t.Errorf("error\n%s\nwant it to contain\n%s", msg, w)
				}
			}
		})
	}

	// The right URL for each opens.
	for _, raw := range []string{plain.URL(), sen.URL(), cluster.URL()} {
		rdb, err := Open(context.Background(), raw, 5*time.Second)
		if err != nil {
			t.Errorf("Open(%s): %v", Redact(raw), err)
			continue
		}
		if err := rdb.Set(context.Background(), "orgsync-probe", "1", 0).Err(); err != nil {
			t.Errorf("%s: SET: %v", Redact(raw), err)
		}
		rdb.Close()
	}
}

// TestOpenSingleNodeCluster: redis:// to a Cluster's only node, serving
// every slot, works as a plain server does (every command orgsync sends
// keeps its keys in one slot), so it is not refused; once the node serves
// no slot, neither URL form opens, and both say why.
func TestOpenSingleNodeCluster(t *testing.T) {
	t.Parallel()
	c := redistest.StartCluster(t, 1)
	addr := c.Masters()[0].Addr
	ctx := context.Background()
	rdb, err := Open(ctx, "redis://"+addr+"/0", 5*time.Second)
	if err != nil {
		t.Fatalf("Open of a one-node Cluster by redis://: %v", err)
	}
	rdb.Close()

	if err := c.Masters()[0].Client().Do(ctx, "CLUSTER", "DELSLOTSRANGE", 0, 16383).Err(); err != nil {
		t.Fatal(err)
	}
	want := "does not serve (cluster_state:fail): every slot must be assigned to a reachable master"
	for _, raw := range []string{"redis://" + addr + "/0", c.URL()} {
		testrig.WaitFor(t, "Open("+raw+") to refuse a Cluster serving no slot", 10*time.Second, func() (bool, string) {
			rdb, err := Open(ctx, raw, 5*time.Second)
			if err == nil {
				rdb.Close()
				return false, "it opened"
			}
			return strings.Contains(err.Error(), want), err.Error()
		})
	}
}
