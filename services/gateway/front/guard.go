// The front's defences against HTTP/2 abuse, beyond the server options set in main.go.
//
// gRPC-go 1.33 (Debian's) predates the fix for HTTP/2 rapid reset (CVE-2023-44487, fixed in
// 1.56.3): a stream that the client resets stops counting against MaxConcurrentStreams at once,
// while its handler goroutine runs on, so a client that opens and resets streams in a loop gets
// unbounded goroutines and work. The guard restores the bound the fix brought: a stream counts
// against its connection's limit from its HEADERS until its handler has returned (the tap handle
// counts it in, the stats handler's End counts it out), and over the limit it is refused with
// REFUSED_STREAM before any goroutine is started for it. New streams are also rate-limited per
// connection, a connection that goes on opening streams it is refused is closed, and the number
// of connections is bounded.
package main

import (
	"context"
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/stats"
	"google.golang.org/grpc/tap"
)

var errRefused = errors.New("too many streams on this connection")

type guardConfig struct {
	maxStreams     int     // streams per connection, counted until their handlers return
	streamRate     float64 // new streams per second per connection, sustained
	streamBurst    float64 // ... and in a burst
	refusalsPerSec float64 // refused streams a connection may go on opening before it is closed
	maxConnections int
}

type connGuard struct {
	conn           net.Conn
	inFlight       int
	tokens         float64 // new streams it may open now
	refusalTokens  float64 // refusals it may still earn before it is closed
	last           time.Time
	closedForAbuse bool
}

type guard struct {
	cfg     guardConfig
	mu      sync.Mutex
	conns   map[string]*connGuard // remote address -> its connection
	refused uint64                // streams refused (atomic)
	closed  uint64                // connections closed for abuse (atomic)
	turned  uint64                // connections turned away at accept (atomic)
}

func newGuard(cfg guardConfig) *guard {
	return &guard{cfg: cfg, conns: map[string]*connGuard{}}
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
		key := c.RemoteAddr().String()
		l.g.mu.Lock()
		full := len(l.g.conns) >= l.g.cfg.maxConnections
		if !full {
			l.g.conns[key] = &connGuard{
				conn: c, tokens: l.g.cfg.streamBurst, refusalTokens: l.g.cfg.refusalsPerSec,
				last: time.Now(),
			}
		}
		l.g.mu.Unlock()
		if full {
			atomic.AddUint64(&l.g.turned, 1)
			c.Close()
			continue
		}
		return &guardedConn{Conn: c, g: l.g, key: key}, nil
	}
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
// goroutine for it: a refusal here costs one RST_STREAM frame and nothing else.
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
	now := time.Now()
	elapsed := now.Sub(c.last).Seconds()
	c.last = now
	c.tokens = minFloat(g.cfg.streamBurst, c.tokens+elapsed*g.cfg.streamRate)
	c.refusalTokens = minFloat(g.cfg.refusalsPerSec, c.refusalTokens+elapsed*g.cfg.refusalsPerSec)
	if c.tokens >= 1 && c.inFlight < g.cfg.maxStreams {
		c.tokens--
		c.inFlight++
		g.mu.Unlock()
		return ctx, nil
	}
	c.refusalTokens--
	abusive := c.refusalTokens < 0 && !c.closedForAbuse
	if abusive {
		c.closedForAbuse = true
	}
	g.mu.Unlock()
	atomic.AddUint64(&g.refused, 1)
	if abusive {
		// It goes on opening streams it is refused: it is not a client that backs off.
		atomic.AddUint64(&g.closed, 1)
		c.conn.Close()
	}
	return nil, errRefused
}

// done counts a stream out when its handler has returned (stats.End comes after that).
func (g *guard) done(ctx context.Context) {
	key, ok := peerKey(ctx)
	if !ok {
		return
	}
	g.mu.Lock()
	if c := g.conns[key]; c != nil && c.inFlight > 0 {
		c.inFlight--
	}
	g.mu.Unlock()
}

func (g *guard) connections() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return len(g.conns)
}

// guardStats is the stats handler that tells the guard when a stream's handler has returned.
type guardStats struct{ g *guard }

func (s guardStats) TagRPC(ctx context.Context, _ *stats.RPCTagInfo) context.Context { return ctx }
func (s guardStats) HandleRPC(ctx context.Context, rs stats.RPCStats) {
	if _, ok := rs.(*stats.End); ok {
		s.g.done(ctx)
	}
}
func (s guardStats) TagConn(ctx context.Context, _ *stats.ConnTagInfo) context.Context {
	return ctx
}
func (s guardStats) HandleConn(context.Context, stats.ConnStats) {}

func minFloat(a, b float64) float64 {
	if a < b {
		return a
	}
	return b
}
