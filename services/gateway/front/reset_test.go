package main

import (
	"bytes"
	"encoding/binary"
	"net"
	"runtime"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"google.golang.org/grpc/credentials/insecure"
)

// rawClient speaks HTTP/2 frames to the front directly, as an attacker would.
type rawClient struct {
	conn   net.Conn
	framer *http2.Framer
	block  []byte
}

func dialRaw(t *testing.T, address string) *rawClient {
	t.Helper()
	conn, err := net.Dial("tcp", address)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	if _, err := conn.Write([]byte(http2.ClientPreface)); err != nil {
		t.Fatal(err)
	}
	framer := http2.NewFramer(conn, conn)
	if err := framer.WriteSettings(); err != nil {
		t.Fatal(err)
	}
	go func() { // take in what the server says, so that its writes never block
		for {
			if _, err := framer.ReadFrame(); err != nil {
				return
			}
		}
	}()
	var block bytes.Buffer
	enc := hpack.NewEncoder(&block)
	for _, f := range [][2]string{{":method", "POST"}, {":scheme", "http"}, {":path", modelInfer},
		{":authority", address}, {"content-type", "application/grpc"}, {"te", "trailers"}} {
		enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
	}
	return &rawClient{conn: conn, framer: framer, block: block.Bytes()}
}

// callAndReset sends a whole ModelInfer on a new stream, then resets it at once.
func (c *rawClient) callAndReset(id uint32, request []byte) error {
	if err := c.framer.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: c.block, EndHeaders: true}); err != nil {
		return err
	}
	message := append([]byte{0}, binary.BigEndian.AppendUint32(nil, uint32(len(request)))...)
	if err := c.framer.WriteData(id, true, append(message, request...)); err != nil {
		return err
	}
	return c.framer.WriteRSTStream(id, http2.ErrCodeCancel)
}

// Rapid reset (CVE-2023-44487) with gRPC-go's own bound: a reset stream's handler still counts
// against -max-streams until it returns, so however fast a client opens and resets streams, the
// trainer never sees more than that many of its requests at once, and once the trainer answers,
// the front's goroutines are back where they were.
func TestRapidResetNeverRunsMoreHandlersThanTheStreamLimit(t *testing.T) {
	const maxStreams = 4
	f := startFront(t, "", "-batching=off", "-max-streams=4", "-stream-rate=1e9", "-stream-burst=1e9")
	var mu sync.Mutex
	inFlight, most := 0, 0
	release := make(chan struct{})
	f.torch.setHandle(func(requests [][]byte) []reply {
		mu.Lock()
		inFlight++
		most = max(most, inFlight)
		mu.Unlock()
		<-release
		mu.Lock()
		inFlight--
		mu.Unlock()
		return echo(requests)
	})
	if _, err := call(timeout(t), f.client, "/inference.GRPCInferenceService/ServerLive", nil); err != nil {
		t.Fatal(err)
	}
	before := runtime.NumGoroutine()
	attacker := dialRaw(t, f.address)
	sent := 0
	done := make(chan struct{})
	go func() { // the server stops reading the attacker once its handlers are all busy
		defer close(done)
		for id := uint32(1); id < 2000; id += 2 {
			attacker.conn.SetWriteDeadline(time.Now().Add(500 * time.Millisecond))
			if attacker.callAndReset(id, inferRequest("m-torch-onnx")) != nil {
				return
			}
			sent++
		}
	}()
	<-done
	time.Sleep(100 * time.Millisecond)
	mu.Lock()
	held := inFlight
	mu.Unlock()
	if held != maxStreams {
		t.Errorf("%d requests at the trainer while the attacker's streams wait, want %d", held, maxStreams)
	}
	// Meanwhile, another client is served (its own connection, its own streams).
	other := dialBytes(t, f.address, insecure.NewCredentials())
	if _, err := call(timeout(t), other, modelInfer, inferRequest("m-tf-onnx")); err != nil {
		t.Fatal(err)
	}
	other.Close()
	close(release)
	attacker.conn.Close()
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > before+5 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	mu.Lock()
	defer mu.Unlock()
	if most > maxStreams {
		t.Errorf("%d requests at the trainer at once, the limit is %d", most, maxStreams)
	}
	if n := runtime.NumGoroutine(); n > before+5 {
		t.Errorf("goroutines %d -> %d after the attack", before, n)
	}
	t.Logf("goroutines %d -> %d, settled in %v", before, runtime.NumGoroutine(), time.Since(deadline.Add(-5*time.Second)))
	t.Logf("%d streams opened and reset before the front stopped reading; at most %d at the trainer", sent, most)
}
