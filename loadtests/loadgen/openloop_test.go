package main

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func TestConstantGapsAreExactAndPoissonGapsExponential(t *testing.T) {
	constant := gaps("constant", 400, 1)
	for range 10 {
		if g := constant(); g != 2500*time.Microsecond {
			t.Fatalf("constant gap %v", g)
		}
	}
	const n, rate = 200000, 1000.0
	poisson := gaps("poisson", rate, 3)
	var sum, squares float64
	first := make([]time.Duration, 5)
	for i := range n {
		g := poisson()
		if i < len(first) {
			first[i] = g
		}
		sum += g.Seconds()
		squares += g.Seconds() * g.Seconds()
	}
	mean := sum / n
	cv := math.Sqrt(squares/n-mean*mean) / mean // 1 for an exponential distribution
	if math.Abs(mean*rate-1) > 0.02 || math.Abs(cv-1) > 0.03 {
		t.Fatalf("mean gap %g s (want %g), coefficient of variation %g (want 1)", mean, 1/rate, cv)
	}
	again, other := gaps("poisson", rate, 3), gaps("poisson", rate, 4)
	same, differs := true, false
	for _, g := range first {
		same = same && again() == g
		differs = differs || other() != g
	}
	if !same || !differs {
		t.Fatal("the same seed must give the same arrivals and another seed others")
	}
}

func openLoopSettings(t *testing.T, address string, bound int, rate, seconds float64, arrivals string) settings {
	t.Helper()
	s, err := parseArgs([]string{"-rate", strconvG(rate), "-arrivals", arrivals, "-warm-up", "0",
		"-latency-file", filepath.Join(t.TempDir(), "latencies.bin"), address, requestFile(t),
		strconvG(float64(bound)), strconvG(seconds)})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func strconvG(v float64) string { b, _ := json.Marshal(v); return string(b) }

func openLoop(t *testing.T, s settings, sleep func(time.Duration)) map[string]float64 {
	t.Helper()
	var out bytes.Buffer
	if err := runOpenLoop(s, sleep, &out); err != nil {
		t.Fatal(err)
	}
	var figures map[string]float64
	if err := json.Unmarshal(out.Bytes(), &figures); err != nil || strings.Count(out.String(), "\n") != 1 {
		t.Fatalf("%q: %v", out.String(), err)
	}
	return figures
}

func readLatencies(t *testing.T, path string) []float64 {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	out := make([]float64, len(data)/8)
	for i := range out {
		out[i] = math.Float64frombits(binary.LittleEndian.Uint64(data[8*i:]))
	}
	return out
}

func TestPoissonArrivalsAreAllSentAndAnswered(t *testing.T) {
	address, served := server(t, 0, 0)
	s := openLoopSettings(t, address, 64, 500, 0.4, "poisson")
	f := openLoop(t, s, time.Sleep)
	// About 200 due (Poisson: 200 +- 3 sd is 158..242); with room in flight, all sent and answered.
	if f["due"] < 150 || f["due"] > 250 || f["sent"] != f["due"] || f["over_bound"] != 0 ||
		f["requests"] != f["sent"] || float64(served.Load()) != f["completed"] || f["completed"] != f["requests"] ||
		f["rate"] != 500 || !(f["p50_ms"] > 0) || f["p99_ms"] < f["p50_ms"] || f["late"] > f["sent"] {
		t.Fatalf("figures %v, served %d", f, served.Load())
	}
	latencies := readLatencies(t, s.latencyFile)
	if float64(len(latencies)) != f["requests"] {
		t.Fatalf("%d latencies written for %g requests", len(latencies), f["requests"])
	}
}

func TestEachRequestIsTimedFromWhenItWasDueAndLateSendsAreCounted(t *testing.T) {
	address, _ := server(t, 0, 0)
	s := openLoopSettings(t, address, 64, 200, 0.5, "constant") // due every 5 ms: 99 in 0.5 s
	const stall = 30 * time.Millisecond
	calls := 0
	sleepy := func(d time.Duration) { // every 20th wait oversleeps, as a descheduled client would
		calls++
		if calls%20 == 0 {
			d += stall
		}
		time.Sleep(d)
	}
	f := openLoop(t, s, sleepy)
	if f["due"] != 99 || f["sent"] != 99 || f["requests"] != 99 || f["over_bound"] != 0 {
		t.Fatalf("figures %v", f)
	}
	// At least one request per stall was sent over 1 ms late, and is timed from its due time.
	slow := 0
	for _, ms := range readLatencies(t, s.latencyFile) {
		if ms >= stall.Seconds()*1000*0.8 {
			slow++
		}
	}
	if f["late"] < float64(calls/20) || slow < calls/20 || f["p99_ms"] < stall.Seconds()*1000*0.8 {
		t.Fatalf("%d stalls: figures %v, %d latencies over 80%% of the stall", calls/20, f, slow)
	}
}

func TestRequestsOverTheBoundInFlightAreCountedAsFailures(t *testing.T) {
	// Each call is held longer than the whole schedule: the first 3 fill the bound, the rest fail.
	address, served := server(t, 0, time.Second)
	s := openLoopSettings(t, address, 3, 400, 0.2, "constant") // 79 due
	f := openLoop(t, s, time.Sleep)
	if f["due"] != 79 || f["sent"] != 3 || f["over_bound"] != 76 || f["requests"] != 3 || served.Load() != 3 ||
		f["p50_ms"] < 1000 {
		t.Fatalf("figures %v, served %d", f, served.Load())
	}
}

func TestFailedCallsAreCountedAndARunWithNoAnswerEndsWithTheError(t *testing.T) {
	address, served := server(t, 20, 0) // 20 answers, then NOT_FOUND
	s := openLoopSettings(t, address, 8, 400, 0.2, "constant")
	f := openLoop(t, s, time.Sleep)
	if f["due"] != 79 || f["requests"] != 20 || served.Load() != 20 || f["failures"] != 59 ||
		f["requests"]+f["failures"] != f["sent"] {
		t.Fatalf("figures %v, served %d", f, served.Load())
	}
	address, _ = server(t, 0, 0)
	s = openLoopSettings(t, address, 8, 400, 0.2, "constant")
	s.request = []byte("not the request") // refused, every one
	err := runOpenLoop(s, time.Sleep, &bytes.Buffer{})
	if status.Code(err) != codes.InvalidArgument {
		t.Fatalf("%v", err)
	}
}
