// The inference link's client side; the other side, and the frame format, are in the Python
// package's serving link module (twinbench/serving/link.py).
package main

import (
	"encoding/binary"
	"errors"
	"io"
	"net"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

type reply struct {
	status  uint8
	payload []byte
}

var errLink = errors.New("a frame that breaks the link format")

type linkClient struct {
	address, name string
	limit         int // the largest reply frame taken, its length prefix excluded
	mu            sync.Mutex
	idle          []net.Conn
}

func (l *linkClient) unavailable() error {
	return status.Errorf(codes.Unavailable, "the %s at %s is unavailable", l.name, l.address)
}

func (l *linkClient) late() error {
	return status.Errorf(codes.DeadlineExceeded, "the %s did not answer in time", l.name)
}

func isTimeout(err error) bool {
	var timeout net.Error
	return errors.As(err, &timeout) && timeout.Timeout()
}

// call sends the requests in one frame and returns their replies, in order. A pooled connection
// may have died with a trainer that restarted since; the frame then goes once more on a new one
// (inference has no side effects, so a repeat is safe).
func (l *linkClient) call(requests [][]byte, deadline time.Time) ([]reply, error) {
	frame := encodeRequests(requests)
	l.mu.Lock()
	var conn net.Conn
	if n := len(l.idle); n > 0 {
		conn, l.idle = l.idle[n-1], l.idle[:n-1]
	}
	l.mu.Unlock()
	for {
		fresh := conn == nil
		if fresh {
			wait := min(time.Until(deadline), 2*time.Second)
			if wait <= 0 {
				return nil, l.late()
			}
			c, err := net.DialTimeout("tcp", l.address, wait)
			if err != nil {
				if isTimeout(err) {
					return nil, l.late()
				}
				return nil, l.unavailable()
			}
			conn = c
		}
		conn.SetDeadline(deadline)
		replies, err := roundTrip(conn, frame, len(requests), l.limit)
		if err == nil {
			l.mu.Lock()
			l.idle = append(l.idle, conn)
			l.mu.Unlock()
			return replies, nil
		}
		conn.Close() // after a timeout, its late reply would be read as the next call's
		if isTimeout(err) {
			return nil, l.late()
		}
		if fresh {
			return nil, l.unavailable()
		}
		conn = nil // a stale pooled connection: once more, on a new one
	}
}

func (l *linkClient) close() {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, c := range l.idle {
		c.Close()
	}
	l.idle = nil
}

// encodeRequests lays a frame out as the requests and the headers between them, for one writev:
// the requests' bytes are sent from where they are, never copied into a frame.
func encodeRequests(requests [][]byte) [][]byte {
	size := 4
	for _, r := range requests {
		size += 4 + len(r)
	}
	heads := make([]byte, 8+4*len(requests))
	binary.BigEndian.PutUint32(heads[0:], uint32(size))
	binary.BigEndian.PutUint32(heads[4:], uint32(len(requests)))
	parts := make([][]byte, 0, 2*len(requests)+1)
	if len(requests) == 0 {
		return append(parts, heads)
	}
	for i, r := range requests {
		at := 8 + 4*i
		binary.BigEndian.PutUint32(heads[at:], uint32(len(r)))
		start := at // the first item's header goes out with the frame's
		if i == 0 {
			start = 0
		}
		parts = append(parts, heads[start:at+4], r)
	}
	return parts
}

func roundTrip(conn net.Conn, frame [][]byte, expected, limit int) ([]reply, error) {
	parts := append(net.Buffers(nil), frame...) // WriteTo consumes its slice; a retry needs it whole
	if _, err := parts.WriteTo(conn); err != nil {
		return nil, err
	}
	return readReplies(conn, expected, limit)
}

// readReplies reads one reply frame: its length prefix, then a body of at most limit bytes, which
// is read only once the prefix has been checked, so a trainer's bad prefix costs no memory.
func readReplies(r io.Reader, expected, limit int) ([]reply, error) {
	var head [4]byte
	if _, err := io.ReadFull(r, head[:]); err != nil {
		return nil, err
	}
	length := binary.BigEndian.Uint32(head[:])
	if length < 4 || uint64(length) > uint64(limit) {
		return nil, errLink
	}
	body := make([]byte, length)
	if _, err := io.ReadFull(r, body); err != nil {
		return nil, err
	}
	return decodeReplies(body, expected)
}

// decodeReplies parses a reply frame's body (after its length): the count, then each reply's
// status, length and payload. Payloads alias body.
func decodeReplies(body []byte, expected int) ([]reply, error) {
	if len(body) < 4 || uint64(binary.BigEndian.Uint32(body)) != uint64(expected) {
		return nil, errLink
	}
	replies := make([]reply, 0, expected)
	rest := body[4:]
	for range expected {
		if len(rest) < 5 {
			return nil, errLink
		}
		n := uint64(binary.BigEndian.Uint32(rest[1:]))
		if n > uint64(len(rest)-5) {
			return nil, errLink
		}
		replies = append(replies, reply{status: rest[0], payload: rest[5 : 5+n : 5+n]})
		rest = rest[5+n:]
	}
	if len(rest) != 0 {
		return nil, errLink
	}
	return replies, nil
}
