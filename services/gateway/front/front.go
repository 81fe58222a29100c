package main

import (
	"context"
	"crypto/subtle"
	"fmt"
	"io"
	"strconv"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

type front struct {
	cfg      config
	metrics  *frontMetrics
	control  *grpc.ClientConn
	links    map[string]*linkClient
	mu       sync.Mutex
	batchers map[string]*batcher // served model name -> its batching, nil when it is not batched
}

func newFront(cfg config, control *grpc.ClientConn, m *frontMetrics) *front {
	links := map[string]*linkClient{}
	for fw, address := range cfg.links {
		links[fw] = &linkClient{address: address, name: fw + " trainer", limit: cfg.maxMessageBytes + frameSlackBytes}
	}
	return &front{cfg: cfg, control: control, links: links, batchers: map[string]*batcher{}, metrics: m}
}

func (f *front) close() {
	for _, l := range f.links {
		l.close()
	}
	f.control.Close()
}

// handle serves every call: ModelInfer here when it can be routed, anything else relayed.
func (f *front) handle(_ any, stream grpc.ServerStream) error {
	method, _ := grpc.MethodFromServerStream(stream)
	if method != modelInfer {
		return f.relay(method, stream)
	}
	if !f.authorized(stream.Context()) {
		return status.Error(codes.Unauthenticated, "missing or invalid bearer token")
	}
	var request []byte
	if err := stream.RecvMsg(&request); err != nil {
		return err
	}
	name, ok := modelName(request)
	link := f.links[frameworkOf(name)]
	if !ok || link == nil {
		// Not ours to judge: the gateway says what is wrong with it, in its own words (and
		// counts it).
		return f.relayUnary(method, stream, request)
	}
	start := time.Now()
	queued, err := f.infer(stream, name, link, request)
	f.metrics.request(name, err == nil, time.Since(start), queued)
	return err
}

// infer serves one routed ModelInfer; it returns how long the request queued for its frame.
func (f *front) infer(stream grpc.ServerStream, name string, link *linkClient, request []byte) (time.Duration, error) {
	deadline := time.Now().Add(f.cfg.backendTimeout)
	if d, ok := stream.Context().Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	var r reply
	var err error
	var queued time.Duration
	b, known := f.batcher(name)
	if b != nil {
		r, queued, err = b.call(request, deadline)
	} else {
		var replies []reply
		if replies, err = link.call([][]byte{request}, deadline); err == nil {
			r = replies[0]
		}
		f.metrics.frame(name, 1)
	}
	if err != nil {
		return queued, err
	}
	if r.status != 0 {
		return queued, status.Error(codes.Code(r.status), string(r.payload))
	}
	if !known {
		f.learn(name, link)
	}
	return queued, stream.SendMsg(&r.payload)
}

// authorized checks the bearer token in constant time (a client learns nothing from how long a
// wrong token takes to refuse).
func (f *front) authorized(ctx context.Context) bool {
	if f.cfg.token == "" || f.cfg.inferenceOpen {
		return true
	}
	md, _ := metadata.FromIncomingContext(ctx)
	given := md.Get("authorization")
	return len(given) == 1 &&
		subtle.ConstantTimeCompare([]byte(given[0]), []byte("Bearer "+f.cfg.token)) == 1
}

// batcher is the model's dynamic batching (nil: not batched), and whether the model is known.
func (f *front) batcher(name string) (*batcher, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	b, known := f.batchers[name]
	return b, known
}

// learn decides, once per model, whether it is batched. Only a model that was served is learnt,
// so names that clients make up cost no memory.
func (f *front) learn(name string, link *linkClient) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, known := f.batchers[name]; known {
		return
	}
	var b *batcher
	if f.batches(name) {
		limits, own := f.cfg.batchModels[name]
		if !own {
			limits = batchLimits{f.cfg.batchMaxRows, f.cfg.batchDelay}
		}
		b = &batcher{name: name, metrics: f.metrics, send: link.call, maxItems: limits.maxRows, maxBytes: f.cfg.maxMessageBytes, delay: limits.delay}
	}
	f.batchers[name] = b
}

// batchLimits are one model's dynamic batching: the most requests in a frame and how long a
// frame waits for company (a model's tuned setting, from its config.pbtxt, via -batch-models).
type batchLimits struct {
	maxRows int
	delay   time.Duration
}

// parseBatchModels reads -batch-models: "name=rows:delay_us", comma-separated.
func parseBatchModels(text string) (map[string]batchLimits, error) {
	out := map[string]batchLimits{}
	for _, item := range strings.Split(text, ",") {
		if item == "" {
			continue
		}
		name, limits, ok := strings.Cut(item, "=")
		rows, delay, ok2 := strings.Cut(limits, ":")
		r, errRows := strconv.Atoi(rows)
		d, errDelay := strconv.Atoi(delay)
		if !ok || !ok2 || name == "" || errRows != nil || errDelay != nil || r < 1 || d < 0 {
			return nil, fmt.Errorf("-batch-models: %q is not name=rows:delay_us", item)
		}
		out[name] = batchLimits{r, time.Duration(d) * time.Microsecond}
	}
	return out, nil
}

func (f *front) batches(name string) bool {
	switch f.cfg.batching {
	case "off", "":
		return false
	case "on":
		return true
	}
	for _, n := range strings.Split(f.cfg.batching, ",") {
		if n == name {
			return true
		}
	}
	return false
}

// --- relaying to the Python gateway ---

func outgoing(ctx context.Context) context.Context {
	md, _ := metadata.FromIncomingContext(ctx)
	out := metadata.MD{}
	for k, v := range md {
		if !strings.HasPrefix(k, ":") && k != "content-type" && k != "user-agent" {
			out[k] = v
		}
	}
	return metadata.NewOutgoingContext(ctx, out) // the deadline and cancellation come along
}

var relayDesc = &grpc.StreamDesc{ServerStreams: true, ClientStreams: true}

// relay passes one call of any kind (unary or streaming) through to the gateway and back.
func (f *front) relay(method string, in grpc.ServerStream) error {
	ctx, cancel := context.WithCancel(outgoing(in.Context()))
	defer cancel()
	out, err := f.control.NewStream(ctx, relayDesc, method)
	if err != nil {
		return err
	}
	go func() { // the client's messages, as they come
		for {
			var m []byte
			if err := in.RecvMsg(&m); err != nil {
				if err == io.EOF {
					out.CloseSend()
				} else {
					cancel()
				}
				return
			}
			if out.SendMsg(&m) != nil {
				return // the reply side hears why
			}
		}
	}()
	return pipeBack(in, out)
}

// relayUnary passes a call whose request has already been read.
func (f *front) relayUnary(method string, in grpc.ServerStream, request []byte) error {
	out, err := f.control.NewStream(outgoing(in.Context()), relayDesc, method)
	if err != nil {
		return err
	}
	if err := out.SendMsg(&request); err != nil && err != io.EOF {
		return err
	}
	out.CloseSend()
	return pipeBack(in, out)
}

func pipeBack(in grpc.ServerStream, out grpc.ClientStream) error {
	first := true
	for {
		var m []byte
		err := out.RecvMsg(&m)
		if first {
			if header, herr := out.Header(); herr == nil && len(header) > 0 {
				in.SendHeader(header)
			}
			first = false
		}
		if err != nil {
			in.SetTrailer(out.Trailer())
			if err == io.EOF {
				return nil
			}
			return err // the gateway's status, as it gave it
		}
		if err := in.SendMsg(&m); err != nil {
			return err
		}
	}
}
