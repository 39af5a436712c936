package redisconn

import (
	"context"
	"fmt"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"
)

// A REDIS_URL may name the wrong kind of server: a redis-cluster:// URL a
// single server, a redis-sentinel:// URL a plain server or sentinels that
// know no master of that name, a redis:// URL a Sentinel or a node of a
// Cluster of several masters. go-redis then
// fails with its own words ("ERR This instance has cluster support
// disabled", "all sentinels specified in configuration are unreachable:
// redis: nil"), or, for a Sentinel behind redis://, answers PING and fails
// every command after. The functions here ask each address what it is
// (INFO server's redis_mode, a Sentinel's masters) and say what to write
// instead. They show the URL only through Redact and addresses as host:port.
//
// A redis-sentinel:// URL holds two sets of credentials, the master's and
// replicas' (user-info) and the sentinels' (sentinel_password=); when one is
// refused, go-redis says only NOAUTH or WRONGPASS, and sentinelAuth says
// which servers refused and where their password goes in the URL. Redis's
// refusals never repeat a password, and neither do these messages.

// probeTimeout bounds the questions asked after a failed connection.
const probeTimeout = 3 * time.Second

// node is what one address said it is.
type node struct {
	addr string
	mode string // INFO server's redis_mode: standalone, cluster or sentinel; "" if it did not say
	// A Cluster node's CLUSTER INFO: cluster_state and cluster_size.
	clusterState string
	clusterSize  int
	// A Sentinel's masters: name to host:port.
	masters map[string]string
	// refused: the password (or its absence) was refused; one of the
	// refusal constants below.
	refused refusal
	// userinfoOpens: a Sentinel that refused its own credentials took the
	// URL's user-info ones (the master's): the URL is in asynq's form.
	userinfoOpens bool
}

// refusal is how a server refused a connection's credentials.
type refusal int

const (
	accepted   refusal = iota
	noPassword         // it asks for a password and was given none (NOAUTH)
	wrongPass          // it refused the user name or password given (WRONGPASS)
	unasked            // it asks for none and refused one (a Redis before 6, AUTH without requirepass)
)

// refusalOf reads a Redis error: was a password refused, and how.
func refusalOf(err error) refusal {
	if err == nil {
		return accepted
	}
	msg := err.Error()
	switch {
	case strings.HasPrefix(msg, "NOAUTH"):
		return noPassword
	case strings.HasPrefix(msg, "WRONGPASS"), strings.Contains(msg, "invalid password"):
		return wrongPass
	case strings.Contains(msg, "without any password configured"), strings.Contains(msg, "no password is set"):
		return unasked
	}
	return accepted
}

// wrongKind says why raw's server is not what its scheme names, or nil when
// it cannot tell (unreachable, a password refused, INFO not allowed): then
// the caller's error stands.
func wrongKind(ctx context.Context, raw string, opt asynq.RedisConnOpt, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, min(timeout, probeTimeout))
	defer cancel()
	switch o := opt.(type) {
	case asynq.RedisClusterClientOpt:
		nodes := probe(ctx, o.Addrs, func(addr string) *redis.Options {
			return &redis.Options{Addr: addr, Username: o.Username, Password: o.Password, TLSConfig: o.TLSConfig}
		})
		return clusterMismatch(raw, nodes)
	case asynq.RedisFailoverClientOpt:
		nodes := probe(ctx, o.SentinelAddrs, func(addr string) *redis.Options {
			return &redis.Options{Addr: addr, Username: o.SentinelUsername, Password: o.SentinelPassword, TLSConfig: o.TLSConfig}
		})
		// An address refusing the sentinels' credentials may be no
		// Sentinel at all but the master the user-info password is for:
		// asked with that, it says what it is. One that turns out a
		// Sentinel keeps its refusal, for sentinelAuth, noting that the
		// user-info password opened it.
		var refused []int
		for i, n := range nodes {
			if n.refused != accepted {
				refused = append(refused, i)
			}
		}
		if len(refused) > 0 && o.Password != "" {
			addrs := make([]string, len(refused))
			for j, i := range refused {
				addrs[j] = nodes[i].addr
			}
			again := probe(ctx, addrs, func(addr string) *redis.Options {
				return &redis.Options{Addr: addr, Username: o.Username, Password: o.Password, TLSConfig: o.TLSConfig}
			})
			for j, i := range refused {
				switch again[j].mode {
				case "standalone", "cluster":
					nodes[i] = again[j]
				case "sentinel":
					nodes[i].userinfoOpens = true
				}
			}
		}
		if err := sentinelMismatch(raw, o.MasterName, nodes); err != nil {
			return err
		}
		return sentinelAuth(ctx, raw, o, nodes)
	}
	return nil
}

// sentinelAuth: a redis-sentinel:// URL whose sentinels refused their
// password (sentinel_password=), or whose master, as the sentinels name it,
// refused the URL's user-info password. It names who refused and where the
// password goes, never the password.
func sentinelAuth(ctx context.Context, raw string, o asynq.RedisFailoverClientOpt, nodes []node) error {
	var refusedBy []string
	why := accepted
	masterAddr, userinfoOpens := "", false
	for _, n := range nodes {
		if n.mode != "" {
			if a := n.masters[o.MasterName]; a != "" && masterAddr == "" {
				masterAddr = a
			}
			continue
		}
		if n.refused != accepted {
			refusedBy = append(refusedBy, n.addr)
			why = n.refused
			userinfoOpens = userinfoOpens || n.userinfoOpens
		}
	}
	if masterAddr == "" {
		if len(refusedBy) == 0 {
			return nil // unreachable, or no sentinel names the master: the caller's error stands
		}
		sentinels := "the Sentinels at " + strings.Join(refusedBy, ", ")
		switch {
		case why == noPassword && userinfoOpens:
			return fmt.Errorf("REDIS_URL %s: %s ask for the password given before the @, but that one is the master's and replicas' "+
				"(older orgsync gave it to the Sentinels): move it to &sentinel_password=PASSWORD (percent-encoded), "+
				"and put the master's before the @ if it asks for one", Redact(raw), sentinels)
		case why == noPassword:
			return fmt.Errorf("REDIS_URL %s: %s ask for a password and the URL gives them none: add &sentinel_password=PASSWORD "+
				"(percent-encoded); the password before the @ is the master's and replicas', not the Sentinels'", Redact(raw), sentinels)
		case why == wrongPass:
			return fmt.Errorf("REDIS_URL %s: %s refused the password in sentinel_password= (or the user in sentinel_username=): "+
				"it must be their requirepass (percent-encoded); the password before the @ is the master's and replicas'", Redact(raw), sentinels)
		default:
			return fmt.Errorf("REDIS_URL %s: %s ask for no password and refused the one in sentinel_password=: remove it", Redact(raw), sentinels)
		}
	}

	c := redis.NewClient(&redis.Options{Addr: masterAddr, Username: o.Username, Password: o.Password, TLSConfig: o.TLSConfig,
		MaxRetries: -1, PoolSize: 1})
	defer c.Close()
	master := fmt.Sprintf("the master %q at %s (as the Sentinels name it)", o.MasterName, masterAddr)
	switch refusalOf(c.Ping(ctx).Err()) {
	case noPassword:
		return fmt.Errorf("REDIS_URL %s: %s asks for a password and the URL gives none: put the master's password before the @, "+
			"redis-sentinel://:PASSWORD@host:port,...?master=%s (percent-encoded); sentinel_password= is the Sentinels' own",
			Redact(raw), master, o.MasterName)
	case wrongPass:
		return fmt.Errorf("REDIS_URL %s: %s refused the password: the one before the @ must be the master's and replicas' "+
			"(their requirepass, percent-encoded); the Sentinels' own goes in sentinel_password=", Redact(raw), master)
	case unasked:
		return fmt.Errorf("REDIS_URL %s: %s asks for no password and refused the one before the @: remove it "+
			"(a password for the Sentinels goes in sentinel_password=)", Redact(raw), master)
	}
	return nil
}

// clusterMismatch: a redis-cluster:// URL whose seeds are not all nodes of a
// serving Cluster.
func clusterMismatch(raw string, nodes []node) error {
	for _, n := range nodes {
		switch n.mode {
		case "standalone":
			return fmt.Errorf("REDIS_URL %s names a Redis Cluster, but %s is not a Cluster node (cluster support disabled): "+
				"use redis://%s for a single server", Redact(raw), n.addr, n.addr)
		case "sentinel":
			return fmt.Errorf("REDIS_URL %s names a Redis Cluster, but %s is a Sentinel: use redis-sentinel://%s?master=NAME%s",
				Redact(raw), n.addr, n.addr, monitors(n))
		}
	}
	for _, n := range nodes {
		if n.mode == "cluster" && n.clusterState != "" && n.clusterState != "ok" {
			return fmt.Errorf("REDIS_URL %s names a Redis Cluster, but the Cluster %s belongs to does not serve (cluster_state:%s): "+
				"every slot must be assigned to a reachable master", Redact(raw), n.addr, n.clusterState)
		}
	}
	return nil
}

// sentinelMismatch: a redis-sentinel:// URL whose addresses are not
// Sentinels, or whose Sentinels do not know the master asked for.
func sentinelMismatch(raw, master string, nodes []node) error {
	var answered []string
	known := map[string]string{}
	for _, n := range nodes {
		switch {
		case n.mode == "standalone" || n.mode == "cluster":
			kind, scheme := "a Redis server", "redis://"+n.addr
			if n.mode == "cluster" {
				kind, scheme = "a Redis Cluster node", "redis-cluster://"+n.addr
			}
			return fmt.Errorf("REDIS_URL %s names Sentinels, but %s is not one (%s): use %s to reach it directly, "+
				"or list the Sentinels' addresses (port 26379 by default)", Redact(raw), n.addr, kind, scheme)
		case n.mode == "sentinel" && n.masters != nil:
			answered = append(answered, n.addr)
			for name, addr := range n.masters {
				known[name] = addr
			}
		}
	}
	if _, ok := known[master]; len(answered) == 0 || ok {
		return nil
	}
	names := "none"
	if len(known) > 0 {
		names = quotedNames(known)
	}
	return fmt.Errorf("REDIS_URL %s asks for master %q, but the Sentinels at %s do not know a master of that name (they monitor: %s): "+
		"set ?master= to the name in their `sentinel monitor` line", Redact(raw), master, strings.Join(answered, ", "), names)
}

// plainIsWrongKind: a redis:// URL whose server is a Sentinel, or a node of
// a Cluster of several masters (a single node serving every slot works as a
// plain server). It says nothing when INFO is refused (some proxies and
// managed services do).
func plainIsWrongKind(ctx context.Context, raw string, c *redis.Client) error {
	n := describe(ctx, c, c.Options().Addr)
	switch {
	case n.mode == "sentinel":
		return fmt.Errorf("REDIS_URL %s names a single Redis server, but %s is a Sentinel: use redis-sentinel://%s?master=NAME%s",
			Redact(raw), n.addr, n.addr, monitors(n))
	case n.mode == "cluster" && n.clusterState != "" && n.clusterState != "ok":
		return fmt.Errorf("REDIS_URL %s names a single Redis server, but %s is a node of a Redis Cluster that does not serve (cluster_state:%s): "+
			"every slot must be assigned to a reachable master", Redact(raw), n.addr, n.clusterState)
	case n.mode == "cluster" && n.clusterSize > 1:
		return fmt.Errorf("REDIS_URL %s names a single Redis server, but %s is a node of a Redis Cluster of %d masters: "+
			"use redis-cluster://%s (more nodes may follow, comma-separated)", Redact(raw), n.addr, n.clusterSize, n.addr)
	}
	return nil
}

// monitors lists, for a message, the masters a Sentinel monitors.
func monitors(n node) string {
	if len(n.masters) == 0 {
		return ""
	}
	return " (it monitors " + quotedNames(n.masters) + ")"
}

// quotedNames lists names, quoted, sorted and comma-separated.
func quotedNames[V any](names map[string]V) string {
	var q []string
	for name := range names {
		q = append(q, strconv.Quote(name))
	}
	slices.Sort(q)
	return strings.Join(q, ", ")
}

// probe asks every address, at once, what it is.
func probe(ctx context.Context, addrs []string, opts func(addr string) *redis.Options) []node {
	nodes := make([]node, len(addrs))
	var wg sync.WaitGroup
	for i, addr := range addrs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			o := opts(addr)
			o.MaxRetries = -1
			o.PoolSize = 1
			c := redis.NewClient(o)
			defer c.Close()
			nodes[i] = describe(ctx, c, addr)
		}()
	}
	wg.Wait()
	return nodes
}

// describe asks the server behind c what it is.
func describe(ctx context.Context, c *redis.Client, addr string) node {
	n := node{addr: addr}
	info, err := c.Info(ctx, "server").Result()
	if err != nil {
		n.refused = refusalOf(err)
		return n // unreachable, a password refused, INFO not allowed: it cannot tell
	}
	n.mode = infoField(info, "redis_mode")
	switch n.mode {
	case "cluster":
		if ci, err := c.ClusterInfo(ctx).Result(); err == nil {
			n.clusterState = infoField(ci, "cluster_state")
			n.clusterSize, _ = strconv.Atoi(infoField(ci, "cluster_size"))
		}
	case "sentinel":
		if v, err := c.Do(ctx, "SENTINEL", "MASTERS").Result(); err == nil {
			n.masters = sentinelMasters(v)
		}
	}
	return n
}

// sentinelMasters reads the names and addresses in SENTINEL MASTERS, in
// RESP2 (a flat list of field and value per master) or RESP3 (a map per
// master).
func sentinelMasters(v any) map[string]string {
	masters := map[string]string{}
	list, _ := v.([]any)
	for _, m := range list {
		fields := map[string]string{}
		switch m := m.(type) {
		case []any:
			for i := 0; i+1 < len(m); i += 2 {
				fields[fmt.Sprint(m[i])] = fmt.Sprint(m[i+1])
			}
		case map[any]any:
			for k, v := range m {
				fields[fmt.Sprint(k)] = fmt.Sprint(v)
			}
		}
		if name, ok := fields["name"]; ok {
			masters[name] = ""
			if fields["ip"] != "" && fields["port"] != "" {
				masters[name] = net.JoinHostPort(fields["ip"], fields["port"])
			}
		}
	}
	return masters
}

// infoField reads one key:value line of an INFO answer.
func infoField(info, key string) string {
	for _, l := range strings.Split(info, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(l), key+":"); ok {
			return v
		}
	}
	return ""
}
