package main

import (
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

type waiting struct {
	request  []byte
	arrived  time.Time
	queued   time.Duration // until its frame went out
	deadline time.Time
	reply    reply
	err      error
	done     bool
	turn     chan struct{} // a signal when the reply is in, or when this one sends the next frame
}

// batcher merges concurrent requests for one model into frames. No goroutine of its own: a caller
// that finds no frame in flight sends one with every request waiting (itself included, up to
// maxItems and maxBytes); callers that arrive meanwhile wait, and when the frame returns the first
// of them sends the next. A lone caller sends at once, so batching costs nothing at low load, and
// batches grow with the load. With a delay, a sender first waits that long for company.
type batcher struct {
	name     string
	metrics  *frontMetrics
	send     func([][]byte, time.Time) ([]reply, error)
	maxItems int
	maxBytes int
	delay    time.Duration
	mu       sync.Mutex
	queue    []*waiting
	sending  bool
}

func (b *batcher) call(request []byte, deadline time.Time) (reply, time.Duration, error) {
	me := &waiting{request: request, arrived: time.Now(), deadline: deadline, turn: make(chan struct{}, 1)}
	b.mu.Lock()
	b.queue = append(b.queue, me)
	sendNow := !b.sending
	b.sending = true
	b.mu.Unlock()
	if !sendNow {
		<-me.turn
	}
	if !me.done {
		b.sendBatch() // our turn: our request is at the head of the queue
	}
	return me.reply, me.queued, me.err
}

// take removes the next frame's requests from the queue, and those whose callers have given up
// meanwhile: a trainer's time goes to answers somebody waits for.
func (b *batcher) take() (batch, late []*waiting) {
	b.mu.Lock()
	defer b.mu.Unlock()
	now := time.Now()
	count, size, i := 0, 0, 0
	for ; i < len(b.queue) && count < b.maxItems; i++ {
		w := b.queue[i]
		if now.After(w.deadline) {
			late = append(late, w)
			continue
		}
		if count > 0 && size+len(w.request) > b.maxBytes {
			break
		}
		size += len(w.request)
		count++
		batch = append(batch, w)
	}
	b.queue = b.queue[i:]
	return batch, late
}

func (b *batcher) sendBatch() {
	if b.delay > 0 {
		until := time.Now().Add(b.delay)
		for time.Now().Before(until) {
			b.mu.Lock()
			full := len(b.queue) >= b.maxItems
			b.mu.Unlock()
			if full {
				break
			}
			time.Sleep(b.delay / 10)
		}
	}
	batch, late := b.take()
	for _, w := range late {
		w.err = status.Error(codes.DeadlineExceeded, "the deadline passed before the request was sent")
		w.queued = time.Since(w.arrived)
		w.done = true
	}
	if len(batch) > 0 {
		b.sendFrame(batch)
	}
	b.mu.Lock()
	if len(b.queue) > 0 {
		b.queue[0].turn <- struct{}{} // the next frame is theirs to send
	} else {
		b.sending = false
	}
	b.mu.Unlock()
	for _, w := range late {
		w.turn <- struct{}{}
	}
	for _, w := range batch {
		w.turn <- struct{}{}
	}
}

// sendFrame sends a frame and gives each waiting caller its reply. A frame that fails as a whole
// for a reason other than time (the trainer closed the link on a request it could not take, or
// answered out of format) goes again one request at a time, so that one bad request never fails
// the others it shared a frame with.
func (b *batcher) sendFrame(batch []*waiting) {
	requests := make([][]byte, len(batch))
	deadline := batch[0].deadline
	sent := time.Now()
	b.metrics.frame(b.name, len(batch))
	for i, w := range batch {
		requests[i] = w.request
		w.queued = sent.Sub(w.arrived)
		if w.deadline.After(deadline) {
			deadline = w.deadline // nobody's answer is cut short by a neighbour's deadline
		}
	}
	replies, err := b.send(requests, deadline)
	if err != nil && len(batch) > 1 && status.Code(err) != codes.DeadlineExceeded {
		for _, w := range batch {
			b.metrics.frame(b.name, 1)
			if r, err := b.send([][]byte{w.request}, w.deadline); err != nil {
				w.err = err
			} else {
				w.reply = r[0]
			}
			w.done = true
		}
		return
	}
	for i, w := range batch {
		if err != nil {
			w.err = err
		} else {
			w.reply = replies[i]
		}
		w.done = true
	}
}
