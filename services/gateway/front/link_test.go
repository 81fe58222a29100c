package main

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// decodeRequests is the trainer's side of a request frame's body (Python's decode_requests).
func decodeRequests(body []byte) ([][]byte, error) {
	if len(body) < 4 {
		return nil, errLink
	}
	count := binary.BigEndian.Uint32(body)
	rest := body[4:]
	var requests [][]byte
	for range count {
		if len(rest) < 4 {
			return nil, errLink
		}
		n := binary.BigEndian.Uint32(rest)
		if uint64(n) > uint64(len(rest)-4) {
			return nil, errLink
		}
		requests = append(requests, rest[4:4+n])
		rest = rest[4+n:]
	}
	if len(rest) != 0 {
		return nil, errLink
	}
	return requests, nil
}

// encodeReplies is the trainer's reply frame (Python's encode_replies), length prefix included.
func encodeReplies(replies []reply) []byte {
	body := binary.BigEndian.AppendUint32(nil, uint32(len(replies)))
	for _, r := range replies {
		body = append(body, r.status)
		body = binary.BigEndian.AppendUint32(body, uint32(len(r.payload)))
		body = append(body, r.payload...)
	}
	return append(binary.BigEndian.AppendUint32(nil, uint32(len(body))), body...)
}

// fakeTrainer serves the link on loopback with handle; it records each frame's size.
type fakeTrainer struct {
	listener net.Listener
	handle   func([][]byte) []reply
	mu       sync.Mutex
	frames   []int
	conns    atomic.Int64
	open     []net.Conn
}

func startTrainer(t testing.TB, handle func([][]byte) []reply) *fakeTrainer {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	tr := &fakeTrainer{listener: l, handle: handle}
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			tr.conns.Add(1)
			tr.mu.Lock()
			tr.open = append(tr.open, c)
			tr.mu.Unlock()
			go tr.serve(c)
		}
	}()
	t.Cleanup(tr.stop)
	return tr
}

func (tr *fakeTrainer) setHandle(handle func([][]byte) []reply) {
	tr.mu.Lock()
	tr.handle = handle
	tr.mu.Unlock()
}

func (tr *fakeTrainer) address() string { return tr.listener.Addr().String() }

func (tr *fakeTrainer) serve(c net.Conn) {
	defer c.Close()
	for {
		var head [4]byte
		if _, err := io.ReadFull(c, head[:]); err != nil {
			return
		}
		body := make([]byte, binary.BigEndian.Uint32(head[:]))
		if _, err := io.ReadFull(c, body); err != nil {
			return
		}
		requests, err := decodeRequests(body)
		if err != nil {
			return
		}
		tr.mu.Lock()
		tr.frames = append(tr.frames, len(requests))
		tr.mu.Unlock()
		tr.mu.Lock()
		handle := tr.handle
		tr.mu.Unlock()
		replies := handle(requests)
		if replies == nil {
			return // hang up on this frame
		}
		if _, err := c.Write(encodeReplies(replies)); err != nil {
			return
		}
	}
}

// dropConnections closes every open link connection, as a restarted trainer's would be.
func (tr *fakeTrainer) dropConnections() {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	for _, c := range tr.open {
		c.Close()
	}
	tr.open = nil
}

func (tr *fakeTrainer) stop() {
	tr.listener.Close()
	tr.dropConnections()
}

func (tr *fakeTrainer) frameSizes() []int {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	return append([]int(nil), tr.frames...)
}

func echo(requests [][]byte) []reply {
	replies := make([]reply, len(requests))
	for i, r := range requests {
		replies[i] = reply{payload: append([]byte("echo:"), r...)}
	}
	return replies
}

func TestARequestFrameIsWhatPythonDecodes(t *testing.T) {
	requests := [][]byte{[]byte("one"), {}, bytes.Repeat([]byte{7}, 1000)}
	frame := bytes.Join(encodeRequests(requests), nil)
	// Python's encode_requests for the same requests, written out.
	want := []byte{0, 0, 0x03, 0xfb, 0, 0, 0, 3, 0, 0, 0, 3, 'o', 'n', 'e', 0, 0, 0, 0, 0, 0, 0x03, 0xe8}
	want = append(want, requests[2]...)
	if !bytes.Equal(frame, want) {
		t.Fatalf("frame %x\nwant  %x", frame[:30], want[:30])
	}
	got, err := decodeRequests(frame[4:])
	if err != nil || len(got) != 3 || string(got[0]) != "one" || len(got[1]) != 0 || len(got[2]) != 1000 {
		t.Fatalf("decoded %q, %v", got, err)
	}
	if empty := bytes.Join(encodeRequests(nil), nil); !bytes.Equal(empty, []byte{0, 0, 0, 4, 0, 0, 0, 0}) {
		t.Fatalf("an empty frame: %x", empty)
	}
}

func TestRepliesAreDecodedInOrderAndBadFramesRefused(t *testing.T) {
	frame := encodeReplies([]reply{{0, []byte("a")}, {3, []byte("bad input")}, {0, nil}})
	replies, err := readReplies(bytes.NewReader(frame), 3, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	if string(replies[0].payload) != "a" || replies[1].status != 3 || string(replies[1].payload) != "bad input" || len(replies[2].payload) != 0 {
		t.Fatalf("replies %+v", replies)
	}
	for name, bad := range map[string][]byte{
		"a count that is not the requests'": encodeReplies([]reply{{0, nil}}),
		"a length past the frame":           append(binary.BigEndian.AppendUint32(nil, 9), 0, 0, 0, 3, 0, 0, 0, 0, 9),
		"bytes after the last reply":        append(binary.BigEndian.AppendUint32(nil, 6), 0, 0, 0, 0, 1, 2),
		"a frame over the limit":            append(binary.BigEndian.AppendUint32(nil, 1<<30), 0, 0, 0, 0),
		"a frame shorter than its count":    append(binary.BigEndian.AppendUint32(nil, 2), 0, 0),
	} {
		if _, err := readReplies(bytes.NewReader(bad), 3, 1<<20); !errors.Is(err, errLink) {
			t.Errorf("%s: %v", name, err)
		}
	}
	if _, err := readReplies(bytes.NewReader(frame[:10]), 3, 1<<20); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("a cut frame: %v", err)
	}
}

// FuzzReadReplies: a trainer's reply frame, whatever its bytes, is read or refused; nothing the
// bytes say makes the front allocate beyond its limit or read outside the frame.
func FuzzReadReplies(f *testing.F) {
	f.Add(encodeReplies([]reply{{0, []byte("a")}, {3, []byte("bad")}}), uint8(2))
	f.Add(encodeReplies(nil), uint8(0))
	f.Add([]byte{0xff, 0xff, 0xff, 0xff}, uint8(1))
	f.Add([]byte{0, 0, 0, 9, 0, 0, 0, 1, 0, 0xff, 0xff, 0xff, 0xff}, uint8(1))
	const limit = 1 << 16
	f.Fuzz(func(t *testing.T, frame []byte, expected uint8) {
		replies, err := readReplies(bytes.NewReader(frame), int(expected), limit)
		if err != nil {
			return
		}
		if len(replies) != int(expected) {
			t.Fatalf("%d replies for %d requests", len(replies), expected)
		}
		// Read back, it is the same frame.
		if again := encodeReplies(replies); !bytes.Equal(again, frame[:len(again)]) {
			t.Fatalf("replies %+v do not encode to the frame %x", replies, frame)
		}
	})
}

func TestALinkConnectionIsReusedAndAStaleOneRetriedOnce(t *testing.T) {
	tr := startTrainer(t, echo)
	l := &linkClient{address: tr.address(), name: "torch trainer", limit: 1 << 20}
	defer l.close()
	deadline := time.Now().Add(5 * time.Second)
	for i := range 3 {
		replies, err := l.call([][]byte{{byte(i)}}, deadline)
		if err != nil || string(replies[0].payload) != "echo:"+string([]byte{byte(i)}) {
			t.Fatalf("call %d: %+v, %v", i, replies, err)
		}
	}
	if n := tr.conns.Load(); n != 1 {
		t.Fatalf("%d connections for three calls in turn", n)
	}
	tr.dropConnections() // the trainer restarted: the pooled connection is dead
	if _, err := l.call([][]byte{[]byte("x")}, deadline); err != nil {
		t.Fatalf("after a restart: %v", err)
	}
	if n := tr.conns.Load(); n != 2 {
		t.Fatalf("%d connections", n)
	}
}

func TestALinkSaysUnavailableOrLateInGRPCTerms(t *testing.T) {
	tr := startTrainer(t, echo)
	address := tr.address()
	tr.stop()
	l := &linkClient{address: address, name: "tf trainer", limit: 1 << 20}
	_, err := l.call([][]byte{{}}, time.Now().Add(time.Second))
	if status.Code(err) != codes.Unavailable {
		t.Fatalf("a trainer that is gone: %v", err)
	}
	slow := startTrainer(t, func(r [][]byte) []reply { time.Sleep(300 * time.Millisecond); return echo(r) })
	l = &linkClient{address: slow.address(), name: "tf trainer", limit: 1 << 20}
	_, err = l.call([][]byte{{}}, time.Now().Add(50*time.Millisecond))
	if status.Code(err) != codes.DeadlineExceeded {
		t.Fatalf("a trainer that is late: %v", err)
	}
	hangUp := startTrainer(t, func([][]byte) []reply { return nil })
	l = &linkClient{address: hangUp.address(), name: "tf trainer", limit: 1 << 20}
	_, err = l.call([][]byte{{}}, time.Now().Add(time.Second))
	if status.Code(err) != codes.Unavailable {
		t.Fatalf("a trainer that hangs up: %v", err)
	}
}
