// The gateway's front: the gateway's public gRPC port, in Go, because per call it costs a tenth of
// what a Python gRPC server costs (measured with an echo handler on 2 cores: about 0.017 ms of
// CPU a call against 0.15 ms).
//
// It serves ModelInfer itself: it reads the model name (field 1) from the serialized request,
// picks the trainer by the framework in the name (<model>-<framework>-<format>), and hands the
// request, as bytes, to that trainer's inference link (twinbench/link.py has the frame format),
// merging concurrent requests for the same model into one frame (dynamic batching). Every other
// call (training, the other V2 methods, health), and any ModelInfer it cannot route, it relays
// unchanged to the Python gateway behind it, which holds the rest of the logic. The Python
// gateway starts this program and passes it its settings as flags; the token comes in the
// environment (TWINBENCH_TOKEN), never on the command line.
package main

import (
	"context"
	"crypto/subtle"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

const (
	modelInfer = "/inference.GRPCInferenceService/ModelInfer"
	// Frames carry requests already size-checked here; this leaves room for the headers.
	frameSlackBytes = 1024 * 1024
)

// rawCodec passes messages through as bytes: the front never parses what it relays.
type rawCodec struct{}

func (rawCodec) Marshal(v interface{}) ([]byte, error)   { return *(v.(*[]byte)), nil }
func (rawCodec) Unmarshal(d []byte, v interface{}) error { *(v.(*[]byte)) = d; return nil }
func (rawCodec) Name() string                            { return "proto" }
func (rawCodec) String() string                          { return "proto" }

type config struct {
	listen, control string
	links           map[string]string // framework -> its trainer's inference link
	maxMessageBytes int
	backendTimeout  time.Duration
	batching        string // "off", "on", or model names separated by commas
	batchMaxRows    int
	batchDelay      time.Duration
	token           string
	inferenceOpen   bool
	tlsCert, tlsKey string
	metricsListen   string
	guard           guardConfig
	headerListBytes int
	keepaliveMin    time.Duration // the most often a client may ping
	idle, maxAge    time.Duration // connection idle timeout and maximum age
	ageGrace        time.Duration // calls in flight when a connection reaches its age
}

func parseConfig() config {
	var c config
	var links string
	var timeoutS float64
	var delayUS int
	flag.StringVar(&c.listen, "listen", "127.0.0.1:50051", "the public address")
	flag.StringVar(&c.control, "control", "", "the Python gateway, which serves all but ModelInfer")
	flag.StringVar(&links, "links", "", "framework=address of each trainer's link, comma-separated")
	flag.IntVar(&c.maxMessageBytes, "max-message-bytes", 64<<20, "the largest message either way")
	flag.Float64Var(&timeoutS, "backend-timeout-s", 30, "the longest a trainer is waited for")
	flag.StringVar(&c.batching, "batching", "on", "off, on, or the batched model names")
	flag.IntVar(&c.batchMaxRows, "batch-max-rows", 64, "the most requests in one frame")
	flag.IntVar(&delayUS, "batch-delay-us", 0, "how long a frame waits for company")
	flag.BoolVar(&c.inferenceOpen, "inference-open", false, "ModelInfer needs no token")
	flag.StringVar(&c.tlsCert, "tls-cert", "", "certificate (PEM); with -tls-key, TLS")
	flag.StringVar(&c.tlsKey, "tls-key", "", "its key (PEM)")
	flag.StringVar(&c.metricsListen, "metrics-listen", "127.0.0.1:0", "/metrics, for the gateway to scrape")
	flag.IntVar(&c.guard.maxStreams, "max-streams", 256, "concurrent streams per connection")
	flag.Float64Var(&c.guard.streamRate, "stream-rate", 50000, "new streams per second per connection")
	flag.Float64Var(&c.guard.streamBurst, "stream-burst", 5000, "new streams per connection at once")
	flag.Float64Var(&c.guard.refusalsPerSec, "refusals-per-s", 1000, "refused streams per second before a connection is closed")
	flag.IntVar(&c.guard.maxConnections, "max-connections", 4096, "open client connections")
	flag.IntVar(&c.headerListBytes, "max-header-bytes", 16<<10, "the largest header list of a call")
	flag.DurationVar(&c.keepaliveMin, "keepalive-min-time", 10*time.Second, "the most often a client may ping")
	flag.DurationVar(&c.idle, "max-connection-idle", 15*time.Minute, "closes connections idle this long")
	flag.DurationVar(&c.maxAge, "max-connection-age", 2*time.Hour, "asks clients to reconnect after this")
	flag.DurationVar(&c.ageGrace, "max-connection-age-grace", 1*time.Hour, "lets calls (a job's event stream) finish")
	flag.Parse()
	if c.control == "" {
		log.Fatal("-control is required")
	}
	c.links = map[string]string{}
	for _, pair := range strings.Split(links, ",") {
		if fw := strings.SplitN(pair, "=", 2); len(fw) == 2 {
			c.links[fw[0]] = fw[1]
		}
	}
	c.backendTimeout = time.Duration(timeoutS * float64(time.Second))
	c.batchDelay = time.Duration(delayUS) * time.Microsecond
	c.token = os.Getenv("TWINBENCH_TOKEN")
	return c
}

func main() {
	log.SetPrefix("gateway front: ")
	cfg := parseConfig()
	listener, err := net.Listen("tcp", cfg.listen)
	if err != nil {
		log.Fatalf("cannot listen on %s: %v", cfg.listen, err)
	}
	control, err := grpc.Dial(cfg.control, grpc.WithInsecure(), grpc.WithDefaultCallOptions(
		grpc.ForceCodec(rawCodec{}),
		grpc.MaxCallRecvMsgSize(cfg.maxMessageBytes),
		grpc.MaxCallSendMsgSize(cfg.maxMessageBytes),
	))
	if err != nil {
		log.Fatalf("cannot reach the gateway at %s: %v", cfg.control, err)
	}
	g := newGuard(cfg.guard)
	f := newFront(cfg, control, newMetrics(g))
	metricsPort := f.metrics.serve(cfg.metricsListen)
	options := []grpc.ServerOption{
		grpc.CustomCodec(rawCodec{}),
		grpc.UnknownServiceHandler(f.handle),
		grpc.MaxRecvMsgSize(cfg.maxMessageBytes),
		grpc.MaxSendMsgSize(cfg.maxMessageBytes),
		// HTTP/2 abuse (see guard.go and README's security section).
		grpc.MaxConcurrentStreams(uint32(cfg.guard.maxStreams)),
		grpc.InTapHandle(g.tap),
		grpc.StatsHandler(guardStats{g}),
		grpc.MaxHeaderListSize(uint32(cfg.headerListBytes)),
		grpc.ConnectionTimeout(10 * time.Second), // to finish the handshake
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{
			MinTime: cfg.keepaliveMin, PermitWithoutStream: true,
		}),
		grpc.KeepaliveParams(keepalive.ServerParameters{
			MaxConnectionIdle:     cfg.idle,
			MaxConnectionAge:      cfg.maxAge,
			MaxConnectionAgeGrace: cfg.ageGrace,
			Time:                  time.Minute, // a ping after a quiet minute finds dead peers
			Timeout:               20 * time.Second,
		}),
	}
	if cfg.tlsCert != "" {
		creds, err := credentials.NewServerTLSFromFile(cfg.tlsCert, cfg.tlsKey)
		if err != nil {
			log.Fatalf("cannot load the TLS certificate: %v", err)
		}
		options = append(options, grpc.Creds(creds))
	}
	server := grpc.NewServer(options...)
	go func() {
		signals := make(chan os.Signal, 1)
		signal.Notify(signals, syscall.SIGTERM, syscall.SIGINT)
		<-signals
		server.GracefulStop() // calls in flight finish; the gateway waits for this exit
	}()
	go func() {
		// The gateway holds our stdin open: when it ends, even by SIGKILL, so do we, so that
		// the public port is free for the gateway that replaces it.
		io.Copy(io.Discard, os.Stdin)
		log.Print("the gateway is gone; exiting")
		os.Exit(1)
	}()
	// The one line on stdout: the port and the metrics port, which the gateway waits for (port 0
	// picks a free one).
	fmt.Println(listener.Addr().(*net.TCPAddr).Port, metricsPort)
	if err := server.Serve(g.listen(listener)); err != nil {
		log.Fatal(err)
	}
	f.close()
}

type front struct {
	cfg      config
	metrics  *metrics
	control  *grpc.ClientConn
	links    map[string]*linkClient
	mu       sync.Mutex
	batchers map[string]*batcher // served model name -> its batching, nil when it is not batched
}

func newFront(cfg config, control *grpc.ClientConn, m *metrics) *front {
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
func (f *front) handle(_ interface{}, stream grpc.ServerStream) error {
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
		b = &batcher{name: name, metrics: f.metrics, send: link.call, maxItems: f.cfg.batchMaxRows, maxBytes: f.cfg.maxMessageBytes, delay: f.cfg.batchDelay}
	}
	f.batchers[name] = b
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

// modelName reads field 1 of a serialized ModelInferRequest without parsing the rest (serializers
// write fields in number order, so this reads a few bytes).
func modelName(b []byte) (string, bool) {
	for i := 0; i < len(b); {
		key, n := binary.Uvarint(b[i:])
		if n <= 0 {
			return "", false
		}
		i += n
		switch key & 7 {
		case 0:
			if _, n = binary.Uvarint(b[i:]); n <= 0 {
				return "", false
			}
			i += n
		case 1:
			i += 8
		case 5:
			i += 4
		case 2:
			length, n := binary.Uvarint(b[i:])
			if n <= 0 || uint64(len(b)-i-n) < length {
				return "", false
			}
			i += n
			if key>>3 == 1 {
				return string(b[i : i+int(length)]), true
			}
			i += int(length)
		default:
			return "", false
		}
	}
	return "", false
}

// frameworkOf is the framework part of <model>-<framework>-<format>, or "": the naming rule of
// twinbench/repository.py (parse_model_name), the one place it is written in Go.
func frameworkOf(name string) string {
	last := strings.LastIndexByte(name, '-')
	if last < 0 || last == len(name)-1 { // no format part
		return ""
	}
	before := strings.LastIndexByte(name[:last], '-')
	if before < 1 { // no model part
		return ""
	}
	return name[before+1 : last]
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

// --- the inference link (the other side is twinbench/link.py) ---

type reply struct {
	status  uint8
	payload []byte
}

var errLink = errors.New("a frame that breaks the link format")

type linkClient struct {
	address, name string
	limit         int
	mu            sync.Mutex
	idle          []net.Conn
}

func (l *linkClient) unavailable() error {
	return status.Errorf(codes.Unavailable, "the %s at %s is unavailable", l.name, l.address)
}

func (l *linkClient) late() error {
	return status.Errorf(codes.DeadlineExceeded, "the %s did not answer in time", l.name)
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
			wait := time.Until(deadline)
			if wait > 2*time.Second {
				wait = 2 * time.Second
			}
			c, err := net.DialTimeout("tcp", l.address, wait)
			if err != nil {
				var timeout net.Error
				if errors.As(err, &timeout) && timeout.Timeout() {
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
		var timeout net.Error
		if errors.As(err, &timeout) && timeout.Timeout() {
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
	parts := make([][]byte, 0, 2*len(requests))
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
	var head [4]byte
	if _, err := io.ReadFull(conn, head[:]); err != nil {
		return nil, err
	}
	length := int(binary.BigEndian.Uint32(head[:]))
	if length < 4 || length > limit {
		return nil, errLink
	}
	body := make([]byte, length)
	if _, err := io.ReadFull(conn, body); err != nil {
		return nil, err
	}
	if int(binary.BigEndian.Uint32(body)) != expected {
		return nil, errLink
	}
	replies := make([]reply, 0, expected)
	at := 4
	for i := 0; i < expected; i++ {
		if at+5 > len(body) {
			return nil, errLink
		}
		n := int(binary.BigEndian.Uint32(body[at+1:]))
		if at+5+n > len(body) {
			return nil, errLink
		}
		replies = append(replies, reply{status: body[at], payload: body[at+5 : at+5+n]})
		at += 5 + n
	}
	return replies, nil
}

// --- dynamic batching ---

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
	metrics  *metrics
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

func (b *batcher) take() []*waiting {
	b.mu.Lock()
	defer b.mu.Unlock()
	count, size := 0, 0
	for _, w := range b.queue {
		if count == b.maxItems || (count > 0 && size+len(w.request) > b.maxBytes) {
			break
		}
		size += len(w.request)
		count++
	}
	batch := b.queue[:count:count]
	b.queue = b.queue[count:]
	return batch
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
	batch := b.take()
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
	for i, w := range batch {
		if err != nil {
			w.err = err
		} else {
			w.reply = replies[i]
		}
		w.done = true
	}
	b.mu.Lock()
	if len(b.queue) > 0 {
		b.queue[0].turn <- struct{}{} // the next frame is theirs to send
	} else {
		b.sending = false
	}
	b.mu.Unlock()
	for _, w := range batch {
		w.turn <- struct{}{}
	}
}
