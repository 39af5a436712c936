package redistest

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/orgsync/orgsync/internal/bench"

	"github.com/orgsync/orgsync/internal/testrig"
)

// clusterSlots is the number of hash slots of a Redis Cluster.
const clusterSlots = 16384

// DefaultClusterNodeTimeout is the --cluster-node-timeout of StartCluster's
// nodes. It is long on purpose: no test fails a Cluster node over, and a
// short one lets a loaded machine (2 cores under -race) mark a slow node as
// failed and take the whole cluster down (CLUSTERDOWN) for a moment.
const DefaultClusterNodeTimeout = 5 * time.Second

// Cluster is a private Redis Cluster of masters only (no replicas), its
// hash slots split evenly in ranges, node i serving the i-th range.
type Cluster struct {
	t     testing.TB
	nodes []*Server
}

// StartCluster starts masters redis-servers with cluster support, each on
// free ports (client and bus) in its own temporary directory, gives each an
// even range of the 16,384 slots, joins them, and waits until every node
// says cluster_state:ok and all agree on who serves which slots. opts apply
// to every node (WithAOF; WithArgs("--cluster-node-timeout", "2000")). The
// nodes are killed when the test ends.
//
// The slots are assigned from Go (CLUSTER SET-CONFIG-EPOCH, ADDSLOTSRANGE,
// MEET), as redis-cli --cluster create does, without its fixed sleeps.
func StartCluster(t testing.TB, masters int, opts ...Option) *Cluster {
	t.Helper()
	requireRedis(t)
	if masters < 1 || masters > clusterSlots {
		t.Fatalf("StartCluster: %d masters; want 1 to %d", masters, clusterSlots)
	}
	c := &Cluster{t: t}
	timeout := strconv.Itoa(int(DefaultClusterNodeTimeout / time.Millisecond))
	for range masters {
		s := newServer(t, append([]Option{clusterNode, WithArgs("--cluster-node-timeout", timeout)}, opts...))
		c.nodes = append(c.nodes, launch(t, s))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// Distinct config epochs before the nodes meet, so that none has to
	// win a collision first; then each its slots.
	for i, s := range c.nodes {
		lo, hi := i*clusterSlots/masters, (i+1)*clusterSlots/masters-1
		if err := s.do(ctx, "CLUSTER", "SET-CONFIG-EPOCH", i+1); err != nil {
			t.Fatalf("cluster node %s: %v", s.Addr, err)
		}
		if err := s.do(ctx, "CLUSTER", "ADDSLOTSRANGE", lo, hi); err != nil {
			t.Fatalf("cluster node %s: %v", s.Addr, err)
		}
	}
	// Every pair meets directly: no waiting for gossip to introduce them.
	for i, a := range c.nodes {
		for _, b := range c.nodes[i+1:] {
			if err := a.do(ctx, "CLUSTER", "MEET", "127.0.0.1", b.port, b.busPort); err != nil {
				t.Fatalf("cluster node %s meeting %s: %v", a.Addr, b.Addr, err)
			}
		}
	}
	testrig.WaitFor(t, "the cluster to form (cluster_state:ok on every node, all agreeing on the slots)", 30*time.Second, c.formed)
	return c
}

// clusterNode makes a server a Cluster node.
func clusterNode(s *Server) { s.cluster = true }

// formed says whether every node is ok and sees the same nodes serving the
// same slots, all connected; status says what is missing.
func (c *Cluster) formed() (bool, string) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	var first string
	for _, s := range c.nodes {
		info, err := s.result(ctx, "CLUSTER", "INFO")
		if err != nil {
			return false, fmt.Sprintf("%s: CLUSTER INFO: %v", s.Addr, err)
		}
		f := bench.InfoFields(info)
		want := map[string]string{"cluster_state": "ok", "cluster_slots_ok": strconv.Itoa(clusterSlots),
			"cluster_known_nodes": strconv.Itoa(len(c.nodes)), "cluster_size": strconv.Itoa(len(c.nodes))}
		for k, v := range want {
			if f[k] != v {
				return false, fmt.Sprintf("%s: %s:%s, want %s", s.Addr, k, f[k], v)
			}
		}
		nodes, err := s.result(ctx, "CLUSTER", "NODES")
		if err != nil {
			return false, fmt.Sprintf("%s: CLUSTER NODES: %v", s.Addr, err)
		}
		view, err := slotView(nodes)
		if err != nil {
			return false, fmt.Sprintf("%s: %v", s.Addr, err)
		}
		if first == "" {
			first = view
		} else if view != first {
			return false, fmt.Sprintf("%s sees\n%s\nthe first node sees\n%s", s.Addr, view, first)
		}
	}
	return true, ""
}

// slotView reduces CLUSTER NODES to what every node must agree on: each
// node's id, address and slots, sorted. A node in handshake, failing, or
// not connected is an error.
func slotView(nodes string) (string, error) {
	var lines []string
	for _, l := range strings.Split(strings.TrimSpace(nodes), "\n") {
		// <id> <ip:port@cport> <flags> <master> <ping-sent> <pong-recv> <config-epoch> <link-state> <slot> ...
		f := strings.Fields(l)
		if len(f) < 8 {
			return "", fmt.Errorf("CLUSTER NODES line %q", l)
		}
		flags := f[2]
		for _, bad := range []string{"handshake", "fail", "noaddr"} {
			if strings.Contains(flags, bad) {
				return "", fmt.Errorf("node %s is %s", f[1], flags)
			}
		}
		if f[7] != "connected" {
			return "", fmt.Errorf("node %s is %s", f[1], f[7])
		}
		addr, _, _ := strings.Cut(f[1], "@")
		lines = append(lines, f[0]+" "+addr+" "+strings.Join(f[8:], " "))
	}
	slices.Sort(lines)
	return strings.Join(lines, "\n"), nil
}

// URL is the cluster's REDIS_URL: redis-cluster:// and every node's address.
func (c *Cluster) URL() string {
	addrs := make([]string, len(c.nodes))
	for i, s := range c.nodes {
		addrs[i] = s.Addr
	}
	return "redis-cluster://" + strings.Join(addrs, ",")
}

// Client returns a new cluster client, closed when the test ends.
func (c *Cluster) Client() *redis.ClusterClient {
	addrs := make([]string, len(c.nodes))
	for i, s := range c.nodes {
		addrs[i] = s.Addr
	}
	cc := redis.NewClusterClient(&redis.ClusterOptions{Addrs: addrs})
	c.t.Cleanup(func() { _ = cc.Close() })
	return cc
}

// Masters returns the nodes, node i serving the i-th range of slots. Each
// is a Server: its Addr, a Client of its own, and its Stats.
func (c *Cluster) Masters() []*Server { return slices.Clone(c.nodes) }
