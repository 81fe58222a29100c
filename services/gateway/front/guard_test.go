package main

import (
	"context"
	"net"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
)

// clock is a time the test moves by hand.
type clock struct{ t time.Time }

func (c *clock) now() time.Time          { return c.t }
func (c *clock) advance(d time.Duration) { c.t = c.t.Add(d) }

// loopbackPair is a connected pair of TCP sockets: the server's side first.
func loopbackPair(t *testing.T) (net.Conn, net.Conn) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	client, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	server, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close(); server.Close() })
	return server, client
}

func TestNewStreamsAreRateLimitedPerConnectionAndAnAbuserIsCutOff(t *testing.T) {
	c := &clock{t: time.Unix(1000, 0)}
	g := newGuard(guardConfig{streamRate: 10, streamBurst: 3, refusalsPerSec: 2, maxConnections: 8})
	g.now = c.now
	server, client := loopbackPair(t)
	if g.admit(server) == nil {
		t.Fatal("the first connection was turned away")
	}
	ctx := peer.NewContext(context.Background(), &peer.Peer{Addr: server.RemoteAddr()})
	for i := range 3 { // the burst
		if _, err := g.tap(ctx, nil); err != nil {
			t.Fatalf("stream %d of the burst: %v", i, err)
		}
	}
	if _, err := g.tap(ctx, nil); status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("over the burst: %v", err)
	}
	c.advance(100 * time.Millisecond) // one stream's worth at 10 a second
	if _, err := g.tap(ctx, nil); err != nil {
		t.Fatalf("after the refill: %v", err)
	}
	// Other connections have their own allowance.
	other, _ := loopbackPair(t)
	g.admit(other)
	otherCtx := peer.NewContext(context.Background(), &peer.Peer{Addr: other.RemoteAddr()})
	if _, err := g.tap(otherCtx, nil); err != nil {
		t.Fatalf("another connection: %v", err)
	}
	// Refused twice more (the allowance of refusals is 2 with the one above, and a fraction back
	// since): it goes on, and is cut off.
	for range 3 {
		g.tap(ctx, nil)
	}
	if g.closed.Load() != 1 {
		t.Fatalf("%d connections closed for abuse", g.closed.Load())
	}
	client.SetReadDeadline(time.Now().Add(time.Second))
	if _, err := client.Read(make([]byte, 1)); err == nil {
		t.Fatal("the abusive connection is still open")
	}
	if g.refused.Load() != 4 {
		t.Fatalf("%d streams refused", g.refused.Load())
	}
	// A stream on a connection the guard does not know (a test's, or one closed meanwhile) passes.
	if _, err := g.tap(context.Background(), nil); err != nil {
		t.Fatal(err)
	}
}

func TestConnectionsOverTheLimitAreTurnedAwayAndTheirPlaceFreedOnClose(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g := newGuard(guardConfig{maxConnections: 2})
	guarded := g.listen(l)
	defer guarded.Close()
	accepted := make(chan net.Conn, 10)
	go func() {
		for {
			c, err := guarded.Accept()
			if err != nil {
				return
			}
			accepted <- c
		}
	}()
	dial := func() net.Conn {
		c, err := net.Dial("tcp", l.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	dial()
	dial()
	first, second := <-accepted, <-accepted
	third := dial()
	third.SetReadDeadline(time.Now().Add(2 * time.Second))
	if _, err := third.Read(make([]byte, 1)); err == nil || isTimeout(err) {
		t.Fatalf("the third connection was not closed: %v", err)
	}
	if g.turned.Load() != 1 || g.connections() != 2 {
		t.Fatalf("turned away %d, open %d", g.turned.Load(), g.connections())
	}
	first.Close()
	first.Close() // twice: counted out once
	dial()
	select {
	case <-accepted:
	case <-time.After(2 * time.Second):
		t.Fatal("a connection after one closed was not accepted")
	}
	second.Close()
	if g.connections() != 1 {
		t.Fatalf("%d open", g.connections())
	}
}
