package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"io"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protowire"
)

// inferRequest is a ModelInferRequest naming model, with some tensor bytes after the name.
func inferRequest(model string) []byte {
	b := protowire.AppendTag(nil, 1, protowire.BytesType)
	b = protowire.AppendString(b, model)
	b = protowire.AppendTag(b, 7, protowire.BytesType)
	return protowire.AppendBytes(b, []byte{1, 2, 3, 4})
}

// fakeGateway stands for the Python gateway: it answers every call with what it was asked and
// by whom, streams three messages for a Watch, and refuses a ModelInfer it cannot serve.
func fakeGateway(_ any, stream grpc.ServerStream) error {
	method, _ := grpc.MethodFromServerStream(stream)
	md, _ := metadata.FromIncomingContext(stream.Context())
	stream.SendHeader(metadata.Pairs("served-by", "gateway"))
	stream.SetTrailer(metadata.Pairs("authorization-seen", strings.Join(md.Get("authorization"), ",")))
	var request []byte
	if err := stream.RecvMsg(&request); err != nil {
		return err
	}
	if method == modelInfer {
		return status.Error(codes.NotFound, "gateway: no model in "+string(request))
	}
	count := 1
	if strings.HasSuffix(method, "/Watch") {
		count = 3
	}
	for range count {
		reply := []byte("gateway " + method + " " + string(request))
		if err := stream.SendMsg(&reply); err != nil {
			return err
		}
	}
	return nil
}

type testFront struct {
	address   string
	front     *front
	guard     *guard
	torch, tf *fakeTrainer
	client    *grpc.ClientConn
}

func serveGRPC(t testing.TB, server *grpc.Server, l net.Listener) {
	go server.Serve(l)
	t.Cleanup(server.Stop)
}

// startFront runs the front on loopback in this process, before a fake gateway and two fake
// trainers, with the flags given; its client speaks bytes.
func startFront(t testing.TB, token string, flags ...string) *testFront {
	t.Helper()
	gateway := grpc.NewServer(grpc.ForceServerCodec(rawCodec{}), grpc.UnknownServiceHandler(fakeGateway))
	gl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	serveGRPC(t, gateway, gl)
	tag := func(framework string) func([][]byte) []reply {
		return func(requests [][]byte) []reply {
			replies := make([]reply, len(requests))
			for i, r := range requests {
				name, _ := modelName(r)
				if strings.HasPrefix(name, "bad") {
					replies[i] = reply{status: uint8(codes.InvalidArgument), payload: []byte("bad input for " + name)}
				} else {
					replies[i] = reply{payload: []byte(framework + " served " + name)}
				}
			}
			return replies
		}
	}
	tf := &testFront{torch: startTrainer(t, tag("torch")), tf: startTrainer(t, tag("tf"))}
	args := append([]string{
		"-control=" + gl.Addr().String(),
		"-links=torch=" + tf.torch.address() + ",tf=" + tf.tf.address(),
	}, flags...)
	cfg, err := parseConfig(args, func(string) string { return token }, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	control, err := dialControl(cfg)
	if err != nil {
		t.Fatal(err)
	}
	tf.guard = newGuard(cfg.guard)
	tf.front = newFront(cfg, control, newMetrics(tf.guard))
	t.Cleanup(tf.front.close)
	options, err := serverOptions(cfg, tf.front, tf.guard)
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	serveGRPC(t, grpc.NewServer(options...), tf.guard.listen(l))
	tf.address = l.Addr().String()
	if cfg.tlsCert == "" {
		tf.client = dialBytes(t, tf.address, insecure.NewCredentials())
	}
	return tf
}

func dialBytes(t testing.TB, address string, creds credentials.TransportCredentials) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient(address, grpc.WithTransportCredentials(creds),
		grpc.WithDefaultCallOptions(grpc.ForceCodec(rawCodec{})))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

func call(ctx context.Context, conn *grpc.ClientConn, method string, request []byte, opts ...grpc.CallOption) (string, error) {
	var reply []byte
	err := conn.Invoke(ctx, method, &request, &reply, opts...)
	return string(reply), err
}

func timeout(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestModelInferIsRoutedByTheFrameworkInTheModelName(t *testing.T) {
	f := startFront(t, "")
	ctx := timeout(t)
	for model, want := range map[string]string{
		"lenet5-torch-onnx":      "torch served lenet5-torch-onnx",
		"mlp-tf-savedmodel":      "tf served mlp-tf-savedmodel",
		"res-net-50-torch-onnx":  "torch served res-net-50-torch-onnx",
		"lenet5-tf-onnx":         "tf served lenet5-tf-onnx",
		"lenet5-torch-onnx-more": "", // framework "onnx": not ours, relayed
	} {
		got, err := call(ctx, f.client, modelInfer, inferRequest(model))
		if want == "" {
			if status.Code(err) != codes.NotFound || !strings.Contains(err.Error(), "gateway: no model") {
				t.Errorf("%s: %q, %v: want the gateway's NOT_FOUND", model, got, err)
			}
			continue
		}
		if err != nil || got != want {
			t.Errorf("%s: %q, %v; want %q", model, got, err, want)
		}
	}
	// Whatever cannot be routed goes to the gateway, which words the refusal.
	for _, request := range [][]byte{inferRequest("x-jax-onnx"), inferRequest("noname"), []byte("\xff\xff junk"), nil} {
		if _, err := call(ctx, f.client, modelInfer, request); status.Code(err) != codes.NotFound {
			t.Errorf("%q: %v", request, err)
		}
	}
	// A trainer's refusal reaches the client as the trainer gave it.
	_, err := call(ctx, f.client, modelInfer, inferRequest("bad-torch-onnx"))
	if status.Code(err) != codes.InvalidArgument || status.Convert(err).Message() != "bad input for bad-torch-onnx" {
		t.Errorf("a refused request: %v", err)
	}
	text := writeMetrics(f.front.metrics)
	if sample(t, text, `nv_inference_request_success_total{model="lenet5-torch-onnx"}`) != 1 ||
		sample(t, text, `nv_inference_request_failure_total{model="(other)"}`) != 1 {
		t.Errorf("metrics:\n%s", text)
	}
}

func TestEveryOtherCallIsRelayedWithItsMetadataAndStreams(t *testing.T) {
	f := startFront(t, "")
	ctx := metadata.AppendToOutgoingContext(timeout(t), "authorization", "Bearer t")
	var header, trailer metadata.MD
	got, err := call(ctx, f.client, "/inference.GRPCInferenceService/ServerLive", []byte("q"),
		grpc.Header(&header), grpc.Trailer(&trailer))
	if err != nil || got != "gateway /inference.GRPCInferenceService/ServerLive q" {
		t.Fatalf("%q, %v", got, err)
	}
	if header.Get("served-by")[0] != "gateway" || trailer.Get("authorization-seen")[0] != "Bearer t" {
		t.Fatalf("header %v, trailer %v", header, trailer)
	}
	stream, err := f.client.NewStream(ctx, &grpc.StreamDesc{ServerStreams: true}, "/twinbench.v1.Trainer/Watch")
	if err != nil {
		t.Fatal(err)
	}
	request := []byte("job-1")
	if err := stream.SendMsg(&request); err != nil {
		t.Fatal(err)
	}
	stream.CloseSend()
	count := 0
	for {
		var m []byte
		if err := stream.RecvMsg(&m); err == io.EOF {
			break
		} else if err != nil {
			t.Fatal(err)
		}
		count++
	}
	if count != 3 {
		t.Fatalf("%d messages of a stream of 3", count)
	}
}

func TestModelInferNeedsTheTokenUnlessInferenceIsOpen(t *testing.T) {
	f := startFront(t, "s3cret")
	ctx := timeout(t)
	for _, given := range []string{"", "Bearer wrong", "Bearer s3cret2", "s3cret", "bearer s3cret"} {
		c := ctx
		if given != "" {
			c = metadata.AppendToOutgoingContext(ctx, "authorization", given)
		}
		if _, err := call(c, f.client, modelInfer, inferRequest("m-torch-onnx")); status.Code(err) != codes.Unauthenticated {
			t.Errorf("authorization %q: %v", given, err)
		}
	}
	twice := metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer s3cret", "authorization", "Bearer s3cret")
	if _, err := call(twice, f.client, modelInfer, inferRequest("m-torch-onnx")); status.Code(err) != codes.Unauthenticated {
		t.Errorf("the token twice: %v", err)
	}
	good := metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer s3cret")
	if _, err := call(good, f.client, modelInfer, inferRequest("m-torch-onnx")); err != nil {
		t.Errorf("the right token: %v", err)
	}
	open := startFront(t, "s3cret", "-inference-open")
	if _, err := call(ctx, open.client, modelInfer, inferRequest("m-torch-onnx")); err != nil {
		t.Errorf("open inference: %v", err)
	}
}

// selfSigned writes a certificate for 127.0.0.1 and its key, and returns their paths and a pool
// that trusts it.
func selfSigned(t *testing.T) (string, string, *x509.CertPool) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	template := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "twinbench test"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, template, template, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600)
	os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}), 0o600)
	cert, _ := x509.ParseCertificate(der)
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return certFile, keyFile, pool
}

func TestOverTLSTheFrontNegotiatesH2(t *testing.T) {
	certFile, keyFile, pool := selfSigned(t)
	f := startFront(t, "", "-tls-cert="+certFile, "-tls-key="+keyFile)
	client := dialBytes(t, f.address, credentials.NewTLS(&tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}))
	var p peer.Peer
	got, err := call(timeout(t), client, modelInfer, inferRequest("m-tf-onnx"), grpc.Peer(&p))
	if err != nil || got != "tf served m-tf-onnx" {
		t.Fatalf("%q, %v", got, err)
	}
	info, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok || info.State.NegotiatedProtocol != "h2" {
		t.Fatalf("negotiated %+v", p.AuthInfo)
	}
	// A client that offers no ALPN is refused by gRPC's TLS (since 1.67): the server ends the
	// connection once its side of the handshake sees no "h2".
	conn, err := tls.Dial("tcp", f.address, &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS13})
	if err == nil {
		defer conn.Close()
		conn.SetReadDeadline(time.Now().Add(5 * time.Second))
		conn.Write([]byte("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"))
		if _, err = conn.Read(make([]byte, 64)); err == nil || isTimeout(err) {
			t.Fatalf("a client without ALPN was served: %v", err)
		}
	}
	if _, err := parseConfig([]string{"-control=x", "-tls-cert=" + certFile}, os.Getenv, io.Discard); err == nil {
		t.Fatal("a certificate without its key")
	}
}

func TestConfigFromFlags(t *testing.T) {
	cfg, err := parseConfig([]string{"-control=127.0.0.1:1", "-links=torch=a:1,tf=b:2,junk", "-batch-delay-us=250",
		"-backend-timeout-s=1.5"}, func(k string) string { return map[string]string{"TWINBENCH_TOKEN": "tok"}[k] }, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if len(cfg.links) != 2 || cfg.links["tf"] != "b:2" || cfg.batchDelay != 250*time.Microsecond ||
		cfg.backendTimeout != 1500*time.Millisecond || cfg.token != "tok" || cfg.guard.maxStreams != 256 {
		t.Fatalf("%+v", cfg)
	}
	for _, bad := range [][]string{{}, {"-control=x", "-max-streams=0"}, {"-control=x", "-nosuch"}} {
		if _, err := parseConfig(bad, os.Getenv, io.Discard); err == nil {
			t.Errorf("%v was taken", bad)
		}
	}
}

func TestConcurrentCallsForABatchedModelAllGetTheirOwnAnswer(t *testing.T) {
	f := startFront(t, "", "-batching=on", "-batch-max-rows=4")
	ctx := timeout(t)
	var wg sync.WaitGroup
	for c := range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 10 {
				model := "m" + string(rune('a'+c)) + "-torch-onnx"
				if i%2 == 1 {
					model = "bad" + model
				}
				got, err := call(ctx, f.client, modelInfer, inferRequest(model))
				if strings.HasPrefix(model, "bad") {
					if status.Code(err) != codes.InvalidArgument {
						t.Errorf("%s: %v", model, err)
					}
				} else if err != nil || got != "torch served "+model {
					t.Errorf("%s: %q, %v", model, got, err)
				}
			}
		}()
	}
	wg.Wait()
}

func TestEachModelBatchedItsOwnWay(t *testing.T) {
	cfg, err := parseConfig([]string{"-control=x", "-batch-max-rows=64", "-batch-delay-us=0",
		"-batch-models=lenet5-torch-onnx=4:500,lenet5-tf-onnx=16:0"}, os.Getenv, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	f := &front{cfg: cfg, batchers: map[string]*batcher{}}
	for name, want := range map[string]batchLimits{
		"lenet5-torch-onnx":        {4, 500 * time.Microsecond},
		"lenet5-tf-onnx":           {16, 0},
		"lenet5-torch-torchscript": {64, 0}, // not named: the flags' defaults
	} {
		f.learn(name, &linkClient{})
		b, _ := f.batcher(name)
		if b == nil || b.maxItems != want.maxRows || b.delay != want.delay {
			t.Errorf("%s: %+v, want %+v", name, b, want)
		}
	}
	for _, bad := range []string{"x=0:1", "x=4", "=4:1", "x=4:-1", "x"} {
		if _, err := parseConfig([]string{"-control=x", "-batch-models=" + bad}, os.Getenv, io.Discard); err == nil {
			t.Errorf("-batch-models=%s was taken", bad)
		}
	}
}
