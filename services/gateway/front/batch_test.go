package main

import (
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// gatedSend is a trainer whose first frame waits until released, so that callers pile up
// behind it; it records each frame's requests.
type gatedSend struct {
	mu      sync.Mutex
	frames  [][]string
	release chan struct{}
	first   sync.Once
	reply   func([]string) ([]reply, error)
}

func (g *gatedSend) send(requests [][]byte, _ time.Time) ([]reply, error) {
	names := make([]string, len(requests))
	for i, r := range requests {
		names[i] = string(r)
	}
	g.mu.Lock()
	g.frames = append(g.frames, names)
	g.mu.Unlock()
	g.first.Do(func() { <-g.release })
	return g.reply(names)
}

func echoNames(names []string) ([]reply, error) {
	replies := make([]reply, len(names))
	for i, n := range names {
		replies[i] = reply{payload: []byte("re:" + n)}
	}
	return replies, nil
}

func newTestBatcher(send func([][]byte, time.Time) ([]reply, error), maxItems, maxBytes int) *batcher {
	return &batcher{name: "m-torch-onnx", metrics: newMetrics(newGuard(guardConfig{})), send: send, maxItems: maxItems, maxBytes: maxBytes}
}

// pileUp has the first caller's frame held at the trainer while n more callers queue, then
// releases it; it returns each caller's reply or error.
func pileUp(t *testing.T, b *batcher, g *gatedSend, n int, deadline time.Time) map[string]error {
	t.Helper()
	results := map[string]error{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	call := func(name string, deadline time.Time) {
		defer wg.Done()
		r, _, err := b.call([]byte(name), deadline)
		if err == nil && string(r.payload) != "re:"+name && r.status == 0 {
			err = fmt.Errorf("%s got the reply %q", name, r.payload)
		}
		if err == nil && r.status != 0 {
			err = status.Error(codes.Code(r.status), string(r.payload))
		}
		mu.Lock()
		results[name] = err
		mu.Unlock()
	}
	wg.Add(1)
	go call("first", time.Now().Add(5*time.Second))
	for {
		g.mu.Lock()
		started := len(g.frames) > 0
		g.mu.Unlock()
		if started {
			break
		}
		time.Sleep(time.Millisecond)
	}
	wg.Add(n)
	for i := range n {
		go call(fmt.Sprintf("r%02d", i), deadline)
	}
	for {
		b.mu.Lock()
		queued := len(b.queue)
		b.mu.Unlock()
		if queued == n {
			break
		}
		time.Sleep(time.Millisecond)
	}
	close(g.release)
	wg.Wait()
	return results
}

func TestRequestsThatWaitTogetherGoInOneFrameEachWithItsOwnReply(t *testing.T) {
	g := &gatedSend{release: make(chan struct{}), reply: echoNames}
	b := newTestBatcher(g.send, 64, 1<<20)
	results := pileUp(t, b, g, 10, time.Now().Add(5*time.Second))
	for name, err := range results {
		if err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
	if len(g.frames) != 2 || len(g.frames[0]) != 1 || len(g.frames[1]) != 10 {
		t.Fatalf("frames %v: want the lone first, then the ten that waited", g.frames)
	}
}

func TestFramesAreSplitAtTheirItemAndByteLimits(t *testing.T) {
	g := &gatedSend{release: make(chan struct{}), reply: echoNames}
	b := newTestBatcher(g.send, 4, 1<<20)
	pileUp(t, b, g, 10, time.Now().Add(5*time.Second))
	sizes := []int{}
	for _, f := range g.frames {
		sizes = append(sizes, len(f))
	}
	if fmt.Sprint(sizes) != "[1 4 4 2]" {
		t.Fatalf("frame sizes %v, want [1 4 4 2]", sizes)
	}
	// Three bytes a request; 7 bytes a frame: two requests each (a lone request over the limit
	// still goes, on its own).
	g = &gatedSend{release: make(chan struct{}), reply: echoNames}
	b = newTestBatcher(g.send, 64, 7)
	pileUp(t, b, g, 5, time.Now().Add(5*time.Second))
	sizes = sizes[:0]
	for _, f := range g.frames {
		sizes = append(sizes, len(f))
	}
	if fmt.Sprint(sizes) != "[1 2 2 1]" {
		t.Fatalf("frame sizes %v, want [1 2 2 1]", sizes)
	}
}

func TestOneFailedRequestNeverFailsAnother(t *testing.T) {
	// The trainer refuses one request of the frame: the others get their answers.
	g := &gatedSend{release: make(chan struct{}), reply: func(names []string) ([]reply, error) {
		replies, _ := echoNames(names)
		for i, n := range names {
			if n == "r03" {
				replies[i] = reply{status: uint8(codes.InvalidArgument), payload: []byte("bad tensor")}
			}
		}
		return replies, nil
	}}
	results := pileUp(t, newTestBatcher(g.send, 64, 1<<20), g, 8, time.Now().Add(5*time.Second))
	for name, err := range results {
		if (name == "r03") != (status.Code(err) == codes.InvalidArgument) || (name != "r03" && err != nil) {
			t.Errorf("%s: %v", name, err)
		}
	}
	// The trainer drops the link on a frame with a request it cannot take: the frame goes again
	// one request at a time, and only that request fails.
	g = &gatedSend{release: make(chan struct{}), reply: func(names []string) ([]reply, error) {
		for _, n := range names {
			if n == "r05" {
				return nil, status.Error(codes.Unavailable, "the torch trainer at x is unavailable")
			}
		}
		return echoNames(names)
	}}
	results = pileUp(t, newTestBatcher(g.send, 64, 1<<20), g, 8, time.Now().Add(5*time.Second))
	for name, err := range results {
		if (name == "r05") != (status.Code(err) == codes.Unavailable) || (name != "r05" && err != nil) {
			t.Errorf("%s: %v", name, err)
		}
	}
	if len(g.frames) != 1+1+8 {
		t.Errorf("frames %v: want the first, the merged frame, then each of its eight alone", g.frames)
	}
}

func TestARequestWhoseDeadlinePassedInTheQueueIsNotSent(t *testing.T) {
	g := &gatedSend{release: make(chan struct{}), reply: echoNames}
	b := newTestBatcher(g.send, 64, 1<<20)
	results := pileUp(t, b, g, 3, time.Now().Add(-time.Second)) // late already as they queue
	for name, err := range results {
		if name != "first" && status.Code(err) != codes.DeadlineExceeded {
			t.Errorf("%s: %v", name, err)
		}
	}
	if len(g.frames) != 1 {
		t.Errorf("frames %v: the late ones went to the trainer", g.frames)
	}
}

func TestBatchingUnderLoadLosesNoReply(t *testing.T) {
	tr := startTrainer(t, echo)
	l := &linkClient{address: tr.address(), name: "torch trainer", limit: 1 << 20}
	defer l.close()
	b := newTestBatcher(l.call, 8, 1<<20)
	var wg sync.WaitGroup
	errs := make(chan error, 64*20)
	for c := range 64 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 20 {
				name := fmt.Sprintf("c%d-%d", c, i)
				r, _, err := b.call([]byte(name), time.Now().Add(10*time.Second))
				if err == nil && string(r.payload) != "echo:"+name {
					err = fmt.Errorf("%s got %q", name, r.payload)
				}
				if err != nil {
					errs <- err
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	total, merged := 0, 0
	for _, n := range tr.frameSizes() {
		total += n
		if n > 1 {
			merged++
		}
		if n > 8 {
			t.Errorf("a frame of %d requests (the limit is 8)", n)
		}
	}
	if total != 64*20 {
		t.Errorf("%d requests reached the trainer, want %d", total, 64*20)
	}
	if merged == 0 {
		t.Log("no frame was merged (a machine too quiet for callers to overlap)")
	}
	if !strings.Contains(writeMetrics(b.metrics), `twinbench_front_frame_size_count{model="m-torch-onnx"}`) {
		t.Error("frames are not counted in the metrics")
	}
}
