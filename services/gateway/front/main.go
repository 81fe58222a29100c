// The gateway's front: the gateway's public gRPC port, in Go, because per call it costs a tenth of
// what a Python gRPC server costs (measured with an echo handler on 2 cores: about 0.017 ms of
// CPU a call against 0.15 ms).
//
// It serves ModelInfer itself: it reads the model name from the serialized request, picks the
// trainer by the framework in the name (<model>-<framework>-<format>), and hands the request, as
// bytes, to that trainer's inference link (link.go), merging concurrent requests for the same
// model into one frame (dynamic batching, batch.go). Every other call (training, the other V2
// methods, health), and any ModelInfer it cannot route, it relays unchanged to the Python gateway
// behind it, which holds the rest of the logic. The Python gateway starts this program and passes
// it its settings as flags; the token comes in the environment (TWINBENCH_TOKEN), never on the
// command line.
package main

import (
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/keepalive"
)

const (
	modelInfer = "/inference.GRPCInferenceService/ModelInfer"
	// Frames carry requests already size-checked here; this leaves room for the headers.
	frameSlackBytes = 1024 * 1024
)

// rawCodec passes messages through as bytes: the front never parses what it relays. gRPC hands
// Unmarshal a slice of its own (copied out of its pooled buffers), so keeping it is safe.
type rawCodec struct{}

func (rawCodec) Marshal(v any) ([]byte, error)   { return *(v.(*[]byte)), nil }
func (rawCodec) Unmarshal(d []byte, v any) error { *(v.(*[]byte)) = d; return nil }
func (rawCodec) Name() string                    { return "proto" }

type config struct {
	listen, control string
	links           map[string]string // framework -> its trainer's inference link
	maxMessageBytes int
	backendTimeout  time.Duration
	batching        string // "off", "on", or model names separated by commas
	batchMaxRows    int
	batchDelay      time.Duration
	batchModels     map[string]batchLimits // per model, in place of batchMaxRows and batchDelay
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

// parseConfig reads the flags in args; usage and flag errors go to usage.
func parseConfig(args []string, getenv func(string) string, usage io.Writer) (config, error) {
	var c config
	var links string
	var timeoutS float64
	var delayUS int
	var batchModels string
	fs := flag.NewFlagSet("twinbench-front", flag.ContinueOnError)
	fs.SetOutput(usage)
	fs.StringVar(&c.listen, "listen", "127.0.0.1:50051", "the public address")
	fs.StringVar(&c.control, "control", "", "the Python gateway, which serves all but ModelInfer")
	fs.StringVar(&links, "links", "", "framework=address of each trainer's link, comma-separated")
	fs.IntVar(&c.maxMessageBytes, "max-message-bytes", 64<<20, "the largest message either way")
	fs.Float64Var(&timeoutS, "backend-timeout-s", 30, "the longest a trainer is waited for")
	fs.StringVar(&c.batching, "batching", "on", "off, on, or the batched model names")
	fs.IntVar(&c.batchMaxRows, "batch-max-rows", 64, "the most requests in one frame")
	fs.IntVar(&delayUS, "batch-delay-us", 0, "how long a frame waits for company")
	fs.StringVar(&batchModels, "batch-models", "", "name=rows:delay_us of each model batched its own way, comma-separated")
	fs.BoolVar(&c.inferenceOpen, "inference-open", false, "ModelInfer needs no token")
	fs.StringVar(&c.tlsCert, "tls-cert", "", "certificate (PEM); with -tls-key, TLS")
	fs.StringVar(&c.tlsKey, "tls-key", "", "its key (PEM)")
	fs.StringVar(&c.metricsListen, "metrics-listen", "127.0.0.1:0", "/metrics, for the gateway to scrape")
	fs.IntVar(&c.guard.maxStreams, "max-streams", 256, "concurrent streams per connection")
	fs.Float64Var(&c.guard.streamRate, "stream-rate", 50000, "new streams per second per connection")
	fs.Float64Var(&c.guard.streamBurst, "stream-burst", 5000, "new streams per connection at once")
	fs.Float64Var(&c.guard.refusalsPerSec, "refusals-per-s", 1000, "refused streams per second before a connection is closed")
	fs.IntVar(&c.guard.maxConnections, "max-connections", 4096, "open client connections")
	fs.IntVar(&c.headerListBytes, "max-header-bytes", 16<<10, "the largest header list of a call")
	fs.DurationVar(&c.keepaliveMin, "keepalive-min-time", 10*time.Second, "the most often a client may ping")
	fs.DurationVar(&c.idle, "max-connection-idle", 15*time.Minute, "closes connections idle this long")
	fs.DurationVar(&c.maxAge, "max-connection-age", 2*time.Hour, "asks clients to reconnect after this")
	fs.DurationVar(&c.ageGrace, "max-connection-age-grace", 1*time.Hour, "lets calls (a job's event stream) finish")
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	if c.control == "" {
		return c, fmt.Errorf("-control is required")
	}
	if c.maxMessageBytes < 1 || c.guard.maxStreams < 1 || c.guard.maxConnections < 1 || c.batchMaxRows < 1 {
		return c, fmt.Errorf("-max-message-bytes, -max-streams, -max-connections and -batch-max-rows are positive")
	}
	if (c.tlsCert == "") != (c.tlsKey == "") {
		return c, fmt.Errorf("-tls-cert and -tls-key come together")
	}
	c.links = map[string]string{}
	for _, pair := range strings.Split(links, ",") {
		if framework, address, ok := strings.Cut(pair, "="); ok {
			c.links[framework] = address
		}
	}
	c.backendTimeout = time.Duration(timeoutS * float64(time.Second))
	c.batchDelay = time.Duration(delayUS) * time.Microsecond
	var err error
	if c.batchModels, err = parseBatchModels(batchModels); err != nil {
		return c, err
	}
	c.token = getenv("TWINBENCH_TOKEN")
	return c, nil
}

// serverOptions are the public server's settings; each bounds what one client can make it hold
// (see docs/security.md).
func serverOptions(cfg config, f *front, g *guard) ([]grpc.ServerOption, error) {
	options := []grpc.ServerOption{
		grpc.ForceServerCodec(rawCodec{}),
		grpc.UnknownServiceHandler(f.handle),
		grpc.MaxRecvMsgSize(cfg.maxMessageBytes),
		grpc.MaxSendMsgSize(cfg.maxMessageBytes),
		// gRPC counts a stream until its handler returns (the rapid-reset bound), and stops
		// reading a connection that has this many handlers running.
		grpc.MaxConcurrentStreams(uint32(cfg.guard.maxStreams)),
		grpc.InTapHandle(g.tap),
		grpc.MaxHeaderListSize(uint32(cfg.headerListBytes)),
		grpc.ConnectionTimeout(10 * time.Second), // to finish the handshake
		// A client that pings more often than this is sent GOAWAY (too_many_pings) and cut off.
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
		// gRPC's TLS offers ALPN "h2", which gRPC clients since 1.67 require.
		creds, err := credentials.NewServerTLSFromFile(cfg.tlsCert, cfg.tlsKey)
		if err != nil {
			return nil, fmt.Errorf("cannot load the TLS certificate: %w", err)
		}
		options = append(options, grpc.Creds(creds))
	}
	return options, nil
}

// dialControl is the connection to the Python gateway, on loopback: no TLS there.
func dialControl(cfg config) (*grpc.ClientConn, error) {
	return grpc.NewClient(cfg.control,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(
			grpc.ForceCodec(rawCodec{}),
			grpc.MaxCallRecvMsgSize(cfg.maxMessageBytes),
			grpc.MaxCallSendMsgSize(cfg.maxMessageBytes),
		))
}

func main() {
	log.SetPrefix("gateway front: ")
	cfg, err := parseConfig(os.Args[1:], os.Getenv, os.Stderr)
	if err == flag.ErrHelp {
		os.Exit(0)
	} else if err != nil {
		log.Fatal(err)
	}
	listener, err := net.Listen("tcp", cfg.listen)
	if err != nil {
		log.Fatalf("cannot listen on %s: %v", cfg.listen, err)
	}
	control, err := dialControl(cfg)
	if err != nil {
		log.Fatalf("cannot reach the gateway at %s: %v", cfg.control, err)
	}
	g := newGuard(cfg.guard)
	f := newFront(cfg, control, newMetrics(g))
	metricsPort, err := f.metrics.serve(cfg.metricsListen)
	if err != nil {
		log.Fatal(err)
	}
	options, err := serverOptions(cfg, f, g)
	if err != nil {
		log.Fatal(err)
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
