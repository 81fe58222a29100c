// The front's defences against HTTP/2 abuse beyond what gRPC-go does itself.
//
// gRPC-go bounds, by the server options in main.go: concurrent handlers per connection (a reset
// stream counts until its handler returns, the rapid-reset fix of CVE-2023-44487), header list
// size (CONTINUATION floods end at the limit, in x/net's framer), queued control frames (a
// client that floods PINGs or SETTINGS and never reads stops being read), and pings (more often
// than the keepalive policy allows: GOAWAY too_many_pings). What it does not bound, the guard
// does: the rate of new streams per connection (a client may open and finish cheap calls as fast
// as its link allows), a connection that goes on opening streams it is refused is closed, and the
// number of open connections, so that the per-connection bounds add up to a bound for the
// process (docs/security.md has the sum).
package main

import (
	"context"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/tap"
)

var errRefused = status.Error(codes.ResourceExhausted, "too many new streams on this connection")

type guardConfig struct {
	maxStreams     int     // concurrent streams per connection (gRPC enforces it)
	streamRate     float64 // new streams per second per connection, sustained
	streamBurst    float64 // ... and in a burst
	refusalsPerSec float64 // refused streams a connection may go on opening before it is closed
	maxConnections int
}

type connGuard struct {
	conn           net.Conn
	tokens         float64 // new streams it may open now
	refusalTokens  float64 // refusals it may still earn before it is closed
	last           time.Time
	closedForAbuse bool
}

type guard struct {
	cfg     guardConfig
	now     func() time.Time
	mu      sync.Mutex
	conns   map[string]*connGuard // remote address -> its connection
	refused atomic.Uint64         // streams refused
	closed  atomic.Uint64         // connections closed for abuse
	turned  atomic.Uint64         // connections turned away at accept
}

func newGuard(cfg guardConfig) *guard {
	return &guard{cfg: cfg, now: time.Now, conns: map[string]*connGuard{}}
}

// listen wraps the public listener: each connection is known to the guard while it is open.
func (g *guard) listen(l net.Listener) net.Listener { return &guardedListener{Listener: l, g: g} }

type guardedListener struct {
	net.Listener
	g *guard
}

func (l *guardedListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		if gc := l.g.admit(c); gc != nil {
			return gc, nil
		}
		c.Close()
	}
}

// admit registers a new connection, or returns nil when the process holds its limit already.
func (g *guard) admit(c net.Conn) net.Conn {
	key := c.RemoteAddr().String()
	g.mu.Lock()
	defer g.mu.Unlock()
	if len(g.conns) >= g.cfg.maxConnections {
		g.turned.Add(1)
		return nil
	}
	g.conns[key] = &connGuard{
		conn: c, tokens: g.cfg.streamBurst, refusalTokens: g.cfg.refusalsPerSec, last: g.now(),
	}
	return &guardedConn{Conn: c, g: g, key: key}
}

type guardedConn struct {
	net.Conn
	g    *guard
	key  string
	once sync.Once
}

func (c *guardedConn) Close() error {
	c.once.Do(func() {
		c.g.mu.Lock()
		delete(c.g.conns, c.key)
		c.g.mu.Unlock()
	})
	return c.Conn.Close()
}

func peerKey(ctx context.Context) (string, bool) {
	p, ok := peer.FromContext(ctx)
	if !ok || p.Addr == nil {
		return "", false
	}
	return p.Addr.String(), true
}

// tap runs on the connection's reading goroutine for every new stream, before gRPC starts a
// goroutine for it: a refusal here costs one HEADERS frame and nothing else.
func (g *guard) tap(ctx context.Context, _ *tap.Info) (context.Context, error) {
	key, ok := peerKey(ctx)
	if !ok {
		return ctx, nil
	}
	g.mu.Lock()
	c := g.conns[key]
	if c == nil {
		g.mu.Unlock()
		return ctx, nil
	}
	now := g.now()
	elapsed := now.Sub(c.last).Seconds()
	c.last = now
	c.tokens = min(g.cfg.streamBurst, c.tokens+elapsed*g.cfg.streamRate)
	c.refusalTokens = min(g.cfg.refusalsPerSec, c.refusalTokens+elapsed*g.cfg.refusalsPerSec)
	if c.tokens >= 1 {
		c.tokens--
		g.mu.Unlock()
		return ctx, nil
	}
	c.refusalTokens--
	abusive := c.refusalTokens < 0 && !c.closedForAbuse
	if abusive {
		c.closedForAbuse = true
	}
	g.mu.Unlock()
	g.refused.Add(1)
	if abusive {
		// It goes on opening streams it is refused: it is not a client that backs off.
		g.closed.Add(1)
		c.conn.Close()
	}
	return nil, errRefused
}

func (g *guard) connections() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return len(g.conns)
}
