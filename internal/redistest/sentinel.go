package redistest

import (
	"context"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/orgsync/orgsync/internal/bench"

	"github.com/orgsync/orgsync/internal/testrig"
)

// SentinelMaster is the master name StartSentinel's sentinels monitor.
const SentinelMaster = "orgsync"

// The sentinels' timings: a master silent for DownAfter is down for a
// sentinel, and two of the three agreeing start a failover. A failover not
// done within FailoverTimeout is given up, and retried after twice that.
const (
	SentinelDownAfter       = time.Second
	SentinelFailoverTimeout = 3 * time.Second
)

// Sentinel is a private Redis Sentinel set-up: a master, one replica of it,
// and three sentinels monitoring the master as SentinelMaster with a quorum
// of two.
type Sentinel struct {
	t         testing.TB
	master    *Server // the server the sentinels name master, as last seen
	replica   *Server
	sentinels []*Server
	// The passwords the sentinels, and the master and replica, ask for;
	// empty: none.
	sentinelPassword, dataPassword string
}

// SentinelOption configures StartSentinel.
type SentinelOption func(*sentinelSetup)

type sentinelSetup struct {
	data                           []Option
	sentinelPassword, dataPassword string
}

// DataOptions applies opts to the master and the replica (WithAOF).
func DataOptions(opts ...Option) SentinelOption {
	return func(c *sentinelSetup) { c.data = append(c.data, opts...) }
}

// SentinelPassword makes the sentinels ask for password (requirepass) and
// give it to each other (sentinel sentinel-pass). URL carries it as
// ?sentinel_password=, Client as the failover client's SentinelPassword.
func SentinelPassword(password string) SentinelOption {
	return func(c *sentinelSetup) { c.sentinelPassword = password }
}

// DataPassword makes the master and the replica ask for password
// (requirepass), each give it to the other as its master (masterauth:
// either may be the replica after a failover), and the sentinels give it to
// both (sentinel auth-pass). URL carries it as the user-info password,
// Client as the failover client's Password, and Master and Replica as their
// own. The sentinels ask for none unless SentinelPassword says so.
func DataPassword(password string) SentinelOption {
	return func(c *sentinelSetup) { c.dataPassword = password }
}

// StartSentinel starts a master, a replica of it (--replicaof) and three
// sentinels (redis-server sentinel.conf --sentinel), each on a free port in
// its own temporary directory, and waits until the replica is in sync and
// every sentinel knows the master, the replica and the two other sentinels.
// Everything is killed when the test ends.
func StartSentinel(t testing.TB, opts ...SentinelOption) *Sentinel {
	t.Helper()
	requireRedis(t)
	var setup sentinelSetup
	for _, o := range opts {
		o(&setup)
	}
	s := &Sentinel{t: t, sentinelPassword: setup.sentinelPassword, dataPassword: setup.dataPassword}
	// No wait before a full sync (diskless sync waits 5 s by default for
	// more replicas to join); both, since either may end up the master.
	data := []Option{WithArgs("--repl-diskless-sync-delay", "0")}
	if s.dataPassword != "" {
		data = append(data, WithPassword(s.dataPassword), WithArgs("--masterauth", s.dataPassword))
	}
	data = append(data, setup.data...)
	s.master = launch(t, newServer(t, data))
	s.replica = launch(t, newServer(t, append([]Option{WithArgs("--replicaof", "127.0.0.1", strconv.Itoa(s.master.port))}, data...)))

	conf := fmt.Sprintf("sentinel monitor %[1]s 127.0.0.1 %[2]d 2\n"+
		"sentinel down-after-milliseconds %[1]s %[3]d\n"+
		"sentinel failover-timeout %[1]s %[4]d\n"+
		"sentinel parallel-syncs %[1]s 1\n",
		SentinelMaster, s.master.port, SentinelDownAfter.Milliseconds(), SentinelFailoverTimeout.Milliseconds())
	if s.dataPassword != "" {
		conf += fmt.Sprintf("sentinel auth-pass %s %s\n", SentinelMaster, quoteConf(s.dataPassword))
	}
	if s.sentinelPassword != "" {
		conf += "requirepass " + quoteConf(s.sentinelPassword) + "\nsentinel sentinel-pass " + quoteConf(s.sentinelPassword) + "\n"
	}
	for range 3 {
		sen := newServer(t, []Option{WithArgs("--sentinel")})
		sen.conf, sen.password = conf, s.sentinelPassword
		s.sentinels = append(s.sentinels, launch(t, sen))
	}
	testrig.WaitFor(t, "the replica in sync with the master", 30*time.Second, func() (bool, string) {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		info, err := s.replica.result(ctx, "INFO", "replication")
		f := bench.InfoFields(info)
		return err == nil && f["master_link_status"] == "up" && f["master_sync_in_progress"] == "0", fmt.Sprintf("%v %v", f, err)
	})
	testrig.WaitFor(t, "every sentinel to know the master, its replica and the two other sentinels", 30*time.Second, s.known)
	return s
}

// quoteConf quotes a value for a redis.conf line.
func quoteConf(v string) string { return strconv.Quote(v) }

// known says whether every sentinel sees the master up, the replica linked
// to it, and the other two sentinels.
func (s *Sentinel) known() (bool, string) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	for _, sen := range s.sentinels {
		c := s.sentinelClient(sen.Addr)
		m, err := c.Master(ctx, SentinelMaster).Result()
		if err != nil {
			c.Close()
			return false, fmt.Sprintf("sentinel %s: SENTINEL MASTER: %v", sen.Addr, err)
		}
		reps, err := c.Replicas(ctx, SentinelMaster).Result()
		c.Close()
		if err != nil {
			return false, fmt.Sprintf("sentinel %s: SENTINEL REPLICAS: %v", sen.Addr, err)
		}
		if m["flags"] != "master" || m["num-other-sentinels"] != "2" || len(reps) != 1 ||
			reps[0]["flags"] != "slave" || reps[0]["master-link-status"] != "ok" {
			return false, fmt.Sprintf("sentinel %s: master %v, replicas %v", sen.Addr, m, reps)
		}
	}
	return true, ""
}

func (s *Sentinel) sentinelClient(addr string) *redis.SentinelClient {
	return redis.NewSentinelClient(&redis.Options{Addr: addr, Password: s.sentinelPassword, MaxRetries: -1})
}

// URL is the set-up's REDIS_URL: redis-sentinel://, the master's and
// replica's password (DataPassword) as user-info, the three sentinels,
// ?master=SentinelMaster, and the sentinels' password (SentinelPassword)
// as &sentinel_password=.
func (s *Sentinel) URL() string {
	addrs := make([]string, len(s.sentinels))
	for i, sen := range s.sentinels {
		addrs[i] = sen.Addr
	}
	auth := ""
	if s.dataPassword != "" {
		auth = url.UserPassword("", s.dataPassword).String() + "@"
	}
	q := "?master=" + url.QueryEscape(SentinelMaster)
	if s.sentinelPassword != "" {
		q += "&sentinel_password=" + url.QueryEscape(s.sentinelPassword)
	}
	return "redis-sentinel://" + auth + strings.Join(addrs, ",") + q
}

// Sentinels returns the three sentinels.
func (s *Sentinel) Sentinels() []*Server { return append([]*Server(nil), s.sentinels...) }

// Master is the server the sentinels named master when last asked (at the
// start, or by WaitForPromotion).
func (s *Sentinel) Master() *Server { return s.master }

// Replica is the other data server: the replica, or after a failover the
// old master.
func (s *Sentinel) Replica() *Server { return s.replica }

// Client returns a new failover client (go-redis asks the sentinels where
// the master is), closed when the test ends.
func (s *Sentinel) Client() *redis.Client {
	addrs := make([]string, len(s.sentinels))
	for i, sen := range s.sentinels {
		addrs[i] = sen.Addr
	}
	c := redis.NewFailoverClient(&redis.FailoverOptions{MasterName: SentinelMaster, SentinelAddrs: addrs,
		SentinelPassword: s.sentinelPassword, Password: s.dataPassword})
	s.t.Cleanup(func() { _ = c.Close() })
	return c
}

// KillMaster kills the master at once (SIGKILL), as a crash would, and
// returns it. The sentinels see it down after SentinelDownAfter and
// promote the replica; WaitForPromotion waits for that.
func (s *Sentinel) KillMaster() *Server {
	s.master.Kill()
	return s.master
}

// MasterAddr asks the sentinels, in turn, where the master is, and returns
// the first answer.
func (s *Sentinel) MasterAddr(ctx context.Context) (string, error) {
	var errs []string
	for _, sen := range s.sentinels {
		c := s.sentinelClient(sen.Addr)
		a, err := c.GetMasterAddrByName(ctx, SentinelMaster).Result()
		c.Close()
		if err == nil && len(a) == 2 {
			return net.JoinHostPort(a[0], a[1]), nil
		}
		errs = append(errs, fmt.Sprintf("%s: %v", sen.Addr, err))
	}
	return "", fmt.Errorf("no sentinel names the master: %s", strings.Join(errs, "; "))
}

// WaitForPromotion waits until every sentinel names the replica as master
// and the replica says it is one (role:master), then takes it as the
// master (Master) and the old master as the replica (Replica), and returns
// the new master. It fails the test after timeout.
func (s *Sentinel) WaitForPromotion(timeout time.Duration) *Server {
	s.t.Helper()
	testrig.WaitFor(s.t, "the sentinels to promote the replica "+s.replica.Addr, timeout, func() (bool, string) {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		for _, sen := range s.sentinels {
			c := s.sentinelClient(sen.Addr)
			a, err := c.GetMasterAddrByName(ctx, SentinelMaster).Result()
			c.Close()
			if err != nil || len(a) != 2 || net.JoinHostPort(a[0], a[1]) != s.replica.Addr {
				return false, fmt.Sprintf("sentinel %s names %v (%v)", sen.Addr, a, err)
			}
		}
		info, err := s.replica.result(ctx, "INFO", "replication")
		if role := bench.InfoFields(info)["role"]; err != nil || role != "master" {
			return false, fmt.Sprintf("the replica's role is %q (%v)", role, err)
		}
		return true, ""
	})
	s.master, s.replica = s.replica, s.master
	return s.master
}
