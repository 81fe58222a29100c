package main

import (
	"bytes"
	"encoding/json"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// server answers ModelInfer with the request it got, after holding it for hold, or with NOT_FOUND
// once failAfter calls have been served (0: never); it counts the calls it served.
func server(t *testing.T, failAfter int64, hold time.Duration) (string, *atomic.Int64) {
	t.Helper()
	var served atomic.Int64
	s := grpc.NewServer(grpc.ForceServerCodec(rawCodec{}), grpc.UnknownServiceHandler(
		func(_ any, stream grpc.ServerStream) error {
			method, _ := grpc.MethodFromServerStream(stream)
			var request []byte
			if err := stream.RecvMsg(&request); err != nil {
				return err
			}
			if method != modelInfer || string(request) != "the request" {
				return status.Errorf(codes.InvalidArgument, "%s %q", method, request)
			}
			if failAfter > 0 && served.Load() >= failAfter {
				return status.Error(codes.NotFound, "no such model")
			}
			time.Sleep(hold)
			served.Add(1)
			return stream.SendMsg(&request)
		}))
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go s.Serve(l)
	t.Cleanup(s.Stop)
	return l.Addr().String(), &served
}

func requestFile(t *testing.T) string {
	path := filepath.Join(t.TempDir(), "request.bin")
	if err := os.WriteFile(path, []byte("the request"), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestItCountsWhatTheServerServedAndReportsOneJSONLine(t *testing.T) {
	address, served := server(t, 0, 0)
	s, err := parseArgs([]string{address, requestFile(t), "3", "0.3"})
	if err != nil {
		t.Fatal(err)
	}
	s.warm = 100 * time.Millisecond
	var out bytes.Buffer
	if err := run(s, &out); err != nil {
		t.Fatal(err)
	}
	var figures map[string]float64
	if err := json.Unmarshal(out.Bytes(), &figures); err != nil || strings.Count(out.String(), "\n") != 1 {
		t.Fatalf("%q: %v", out.String(), err)
	}
	n := figures["requests"]
	if n < 1 || float64(served.Load()) < n || figures["p50_ms"] <= 0 || figures["p99_ms"] < figures["p50_ms"] ||
		figures["rps"] <= 0 || figures["client_cpu"] <= 0 || figures["completed"] < n {
		t.Fatalf("figures %v, served %d", figures, served.Load())
	}
}

func TestAFailedCallEndsItWithTheCallsError(t *testing.T) {
	address, _ := server(t, 20, 0)
	s, err := parseArgs([]string{address, requestFile(t), "2", "5"})
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	s.warm = 100 * time.Millisecond
	err = run(s, &bytes.Buffer{})
	if status.Code(err) != codes.NotFound || !strings.Contains(err.Error(), "NotFound") {
		t.Fatalf("%v", err)
	}
	if time.Since(start) > 3*time.Second {
		t.Fatalf("it went on for %v after the failure", time.Since(start))
	}
}

func TestArguments(t *testing.T) {
	file := requestFile(t)
	for _, bad := range [][]string{{}, {"a", file, "1"}, {"a", file, "0", "1"}, {"a", file, "1", "0"},
		{"a", file, "x", "1"}, {"a", file, "1", "NaN"}, {"a", file + ".missing", "1", "1"},
		{"-rate", "-1", "a", file, "1", "1"}, {"-rate", "Inf", "a", file, "1", "1"},
		{"-arrivals", "uniform", "a", file, "1", "1"}, {"-warm-up", "-1", "a", file, "1", "1"},
		{"-no-such-flag", "a", file, "1", "1"}, {"a", file, "1", "1", "-rate", "5"}} {
		if _, err := parseArgs(bad); err == nil {
			t.Errorf("%v was taken", bad)
		}
	}
}

func TestPercentile(t *testing.T) {
	values := []float64{1, 2, 3, 4, 5, 6, 7, 8, 9, 10}
	if percentile(values, 50) != 5 || percentile(values, 99) != 9 || percentile(values, 100) != 10 || percentile([]float64{7}, 99) != 7 {
		t.Fatal(percentile(values, 50), percentile(values, 99))
	}
}

func TestFlagsComeBeforeTheArguments(t *testing.T) {
	s, err := parseArgs([]string{"-rate", "250", "-arrivals", "constant", "-seed", "7", "-warm-up", "0",
		"-latency-file", "l.bin", "a", requestFile(t), "16", "2"})
	if err != nil {
		t.Fatal(err)
	}
	if s.rate != 250 || s.arrivals != "constant" || s.seed != 7 || s.warm != 0 || s.latencyFile != "l.bin" ||
		s.concurrency != 16 || s.duration != 2*time.Second {
		t.Fatalf("%+v", s)
	}
	if s, _ := parseArgs([]string{"a", requestFile(t), "1", "1"}); s.rate != 0 || s.warm != warmUp || s.arrivals != "poisson" {
		t.Fatalf("defaults: %+v", s)
	}
}
