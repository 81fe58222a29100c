"""compare's serving rounds: the two exports of a pair loaded in alternating short blocks.

A load test of minutes per export puts the machine's drift and a passing neighbour on one export
and not the other (an A/A run once read 2.75x because one round met another process). Here the
two exports of a pair (the same format, one per arm, trained from one repeat's seeds) take turns:
each block is `block_seconds` of closed-loop load on one export from the load generator of
`bench serving` (a fresh process per block, its first `warm_s` not counted), and block pairs come
in couples, AB then BA or BA then AB, the orientation of each couple drawn from a generator
seeded with the round and recorded, the first couple starting with the arm whose turn it is
(the first in even rounds), so that drift within a couple cancels and each export goes first
as often. Every block records what else ran (twinbench.experiments.disturbance); a block pair
with a block whose outside load (other processes and steal; the load generator and the
services are the round's work) passes the limit is discarded whole and redone, up to a cap.

Exports stay the unit of the verdict: two exports of one model can serve at a steadily
different pace (docs/fairness.md), so the blocks only estimate each export's figure in its round
(the geometric mean of its blocks' figures, with the log standard error of the block pairs'
ratios recorded), and compare_lines.serving_lines pairs the repeats' exports as before.

With `compare --serving-rate R` each block is an open loop instead: requests fall due at R per
second (Poisson or constant gaps, each block's seed its own) whatever the server does, each timed
from when it fell due, at most OPEN_LOOP_BOUND in flight; a request due while the bound is full
counts as a failure of its block, and the requests sent late are counted beside.
"""

from __future__ import annotations

import itertools
import json
import math
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from twinbench.api import inference_pb2 as ipb
from twinbench.api import trainer_pb2 as tpb
from twinbench.client.inputs import model_inputs, served_inputs
from twinbench.config import Settings
from twinbench.experiments.compare_plan import FORMAT_GROUPS, Arm, CompareOptions
from twinbench.experiments.disturbance import DISTURBANCE_LIMIT, Monitor
from twinbench.experiments.lockstep_pairs import block_orders
from twinbench.rpc.channel import Client
from twinbench.serving.tensors import infer_request

# Short enough that drift between an export's block and the other's is small, long enough that
# each block holds hundreds of requests and the counters' ticks are a small part of it.
BLOCK_SECONDS = 1.0
WARM_S = 0.25  # each block's first requests (a new channel, a cold path): sent, not counted
# The open loop's requests in flight at most (bench serving's --max-in-flight default): far above
# what an export keeping up at its rate holds, so only one falling behind meets it.
OPEN_LOOP_BOUND = 1024
PERCENTILES = {"50": 50, "66": 66, "75": 75, "80": 80, "90": 90, "95": 95, "98": 98, "99": 99,
               "99.9": 99.9, "99.99": 99.99, "100": 100}  # fmt: skip


def block_pairs_for(duration_s: float, block_seconds: float = BLOCK_SECONDS) -> int:
    """Block pairs per round: as much load per export as one `--duration` round gave it."""
    return max(2, round(duration_s / block_seconds))


def parse_seconds(duration: str) -> float:
    """Locust's run time ('5s', '2m', '1h', or seconds) in seconds."""
    text = duration.strip().lower()
    units = {"s": 1, "m": 60, "h": 3600}
    if text and text[-1] in units:
        return float(text[:-1]) * units[text[-1]]
    return float(text)


def outside_disturbed(record: dict, limit: float) -> bool:
    """Whether a serving block met other processes or steal over `limit` of the CPUs (beyond
    what the counters' ticks can resolve); this run's own processes are the block's work."""
    return record["outside_fraction"] - record.get("resolution_fraction", 0.0) > limit


def request_for(client: Client, export: tpb.ModelExport, batch_size: int) -> bytes:
    """One request of `batch_size` rows for the export, built from what it declares."""
    meta = client.inference.ModelMetadata(
        ipb.ModelMetadataRequest(name=export.model_name, version=export.version), timeout=30
    )
    config = client.inference.ModelConfig(
        ipb.ModelConfigRequest(name=export.model_name, version=export.version), timeout=30
    )
    inputs, _ = model_inputs(served_inputs(meta, config), rows=batch_size)
    request = infer_request(export.model_name, inputs, version=export.version)
    return request.SerializeToString()


def latency_figures(ms: np.ndarray) -> dict:
    """A block's latencies as the report reads them (all in ms)."""
    values = np.percentile(ms, list(PERCENTILES.values()))
    pct = {name: float(v) for name, v in zip(PERCENTILES, values, strict=True)}
    return {
        "latency_ms": {"mean": float(ms.mean()), "min": float(ms.min()), "max": float(ms.max()),
                       **{f"p{p}": pct[p] for p in ("50", "90", "95", "99")}},
        "percentiles_ms": pct,
    }  # fmt: skip


def open_loop_flags(rate: float, arrivals: str, seed: int) -> list[str]:
    """The load generator's flags for an open loop (the Go one's and the Python one's alike)."""
    return ["-rate", f"{rate:g}", "-arrivals", arrivals, "-seed", str(seed)]


def load_block(
    generator: list[str], address: str, request_file: Path, users: int, seconds: float,
    warm_s: float = WARM_S, rate: float = 0.0, arrivals: str = "poisson", seed: int = 1,
) -> dict:  # fmt: skip
    """One block: the load generator on one export, `users` callers in a closed loop, or with
    `rate` an open loop at that rate (at most OPEN_LOOP_BOUND in flight); its exact latencies.
    An open loop's requests over the bound and its failed calls are the block's failures."""
    flags = open_loop_flags(rate, arrivals, seed) if rate else []
    concurrency = OPEN_LOOP_BOUND if rate else users
    with tempfile.NamedTemporaryFile(suffix=".f8") as latencies:
        done = subprocess.run(
            [*generator, *flags, "-warm-up", str(warm_s), "-latency-file", latencies.name,
             address, str(request_file), str(concurrency), str(seconds)],
            capture_output=True, text=True,
        )  # fmt: skip
        if done.returncode != 0:
            return {"requests": 0, "failures": 1, "error": done.stderr.strip()[-500:]}
        figures = json.loads(done.stdout.splitlines()[-1])
        ms = np.fromfile(latencies.name, dtype="<f8")
    failures = int(figures.get("failures", 0)) + int(figures.get("over_bound", 0))
    out = {"requests": int(figures["requests"]), "failures": failures,
           "requests_per_second": float(figures["rps"]), "seconds": seconds,
           "client_cpu": figures.get("client_cpu")}  # fmt: skip
    if rate:
        out.update(rate=rate, arrivals=arrivals, seed=seed,
                   **{k: int(figures.get(k, 0)) for k in ("due", "late", "over_bound")})  # fmt: skip
    if len(ms):
        out.update(latency_figures(ms))
    return out


def run_round(
    run_block: Callable[[int], dict],
    block_pairs: int,
    first: int,
    seed: int,
    monitor: Monitor,
    limit: float = DISTURBANCE_LIMIT,
    max_discards: int | None = None,
) -> dict:
    """Block pairs of a round between two exports (arm indices 0 and 1): `run_block(k)` loads
    export k once. Disturbed block pairs are discarded whole and redone, up to the cap."""
    orders = block_orders(block_pairs, first, seed)
    cap = block_pairs if max_discards is None else max_discards
    pairs: list[dict] = []
    valid = discarded = attempt = 0
    too_disturbed = False
    while valid < block_pairs:
        order = orders[valid]
        blocks = []
        for k in order:
            before = monitor.snapshot()
            block = run_block(k)
            block["disturbance"] = monitor.between(before, monitor.snapshot())
            block["export"] = k
            blocks.append(block)
        failed = any(b["failures"] or not b["requests"] for b in blocks)
        discard = not failed and any(outside_disturbed(b["disturbance"], limit) for b in blocks)
        pairs.append({"attempt": attempt, "index": None if discard else valid,
                      "order": list(order), "blocks": blocks, "discarded": discard})  # fmt: skip
        attempt += 1
        if failed:
            break  # a block that failed is a result: the round reports its failures
        if discard:
            discarded += 1
            if discarded > cap:
                too_disturbed = True
                break
        else:
            valid += 1
    return {"seed": seed, "first": first, "pairs": pairs, "discarded": discarded,
            "too_disturbed": too_disturbed}  # fmt: skip


def export_figures(round_: dict, k: int) -> dict:
    """Export k's figures in a round: per latency figure the geometric mean over its blocks of
    the valid block pairs (all pairs when none is valid: a too-disturbed round is reported),
    counts summed; with the block pairs' log ratios' standard error (`log_se`)."""
    pairs = [p for p in round_["pairs"] if not p["discarded"]] or round_["pairs"]
    mine = [b for p in pairs for b in p["blocks"] if b["export"] == k]
    measured = [b for b in mine if b["requests"] and "latency_ms" in b]
    out: dict = {
        "requests": sum(b["requests"] for b in mine),
        "failures": sum(b["failures"] for b in mine),
        "requests_per_second": _geomean([b["requests_per_second"] for b in measured]),
        "blocks": len(mine),
    }
    if any("rate" in b for b in mine):  # an open loop's: due, sent late and over the bound
        out.update({key: sum(b.get(key, 0) for b in mine) for key in ("due", "late", "over_bound")})
    if measured:
        out["latency_ms"] = {key: _geomean([b["latency_ms"][key] for b in measured])
                             for key in measured[0]["latency_ms"]}  # fmt: skip
        out["percentiles_ms"] = {key: _geomean([b["percentiles_ms"][key] for b in measured])
                                 for key in measured[0]["percentiles_ms"]}  # fmt: skip
    else:
        zeros = dict.fromkeys(("mean", "min", "max", "p50", "p90", "p95", "p99"), 0.0)
        out["latency_ms"], out["percentiles_ms"] = zeros, {}
    logs = block_log_ratios(round_, pairs)
    out["block_log_se"] = (float(np.std(logs, ddof=1) / math.sqrt(len(logs)))
                           if len(logs) >= 2 else None)  # fmt: skip
    return out


def block_log_ratios(round_: dict, pairs: list[dict] | None = None) -> list[float]:
    """log(p50 of export 0 / p50 of export 1) per block pair."""
    out = []
    for pair in pairs if pairs is not None else round_["pairs"]:
        p50 = {b["export"]: b.get("latency_ms", {}).get("p50", 0.0) for b in pair["blocks"]}
        if p50.get(0, 0) > 0 and p50.get(1, 0) > 0:
            out.append(math.log(p50[0] / p50[1]))
    return out


def _geomean(values: list[float]) -> float:
    positive = [v for v in values if v > 0]
    return math.exp(float(np.mean(np.log(positive)))) if positive else 0.0


def export_pairs(arms: list[Arm]) -> dict[str, list[tuple[tpb.ModelExport, tpb.ModelExport]]]:
    """Per format group, the two arms' exports of each repeat both arms completed, in order."""
    first, second = arms
    out: dict[str, list[tuple[tpb.ModelExport, tpb.ModelExport]]] = {}
    for a, b in zip(first.jobs, second.jobs, strict=False):
        if a.state != tpb.SUCCEEDED or b.state != tpb.SUCCEEDED:
            continue
        for kind, formats in FORMAT_GROUPS:
            ea = next((e for e in a.exports if e.format in formats), None)
            eb = next((e for e in b.exports if e.format in formats), None)
            if ea is not None and eb is not None:
                out.setdefault(kind, []).append((ea, eb))
    return out


def alternating_load_test(
    address: str,
    settings: Settings,
    arms: list[Arm],
    options: CompareOptions,
    report_dir: Path,
    block_seconds: float = BLOCK_SECONDS,
    progress: Callable[[str], None] = print,
    services_ours: bool = True,
) -> list[dict]:
    """compare's serving rounds in alternating blocks: round r serves repeat r's exports
    (cycling when there are more rounds than repeats), each format's two exports taking turns.
    Returns one record per (arm, format), the shape compare_lines.serving_lines reads. With
    services not started by this run, their CPU is "everything else": blocks are then
    recorded, never discarded."""
    from twinbench.experiments.bench_serving import load_generator
    from twinbench.serving.statistics import server_compute_ms

    generator = load_generator()
    pairs_of = export_pairs(arms)
    per_round = block_pairs_for(parse_seconds(options.duration), block_seconds)
    requests_dir = report_dir / "serving-requests"
    requests_dir.mkdir(parents=True, exist_ok=True)
    client = Client(address, settings)
    files: dict[tuple[str, str], Path] = {}
    try:
        for pairs in pairs_of.values():
            for export in (e for pair in pairs for e in pair):
                path = requests_dir / f"{export.model_name}-v{export.version}.bin"
                path.write_bytes(request_for(client, export, options.serving_batch_size))
                files[(export.model_name, export.version)] = path
    finally:
        client.close()
    monitor = Monitor()
    records: dict[tuple[str, str], dict] = {}
    seeds = itertools.count(1)  # each open-loop block its own arrivals
    for r in range(options.rounds):
        for kind, pairs in pairs_of.items():
            pair = pairs[r % len(pairs)]
            progress(
                f"load test, round {r + 1}/{options.rounds}, {kind}: {pair[0].model_name}"
                f" v{pair[0].version} and {pair[1].model_name} v{pair[1].version} in"
                f" {per_round} alternating block pairs of {block_seconds:g} s, {load_words(options)}"
            )

            def run_block(k: int, pair=pair) -> dict:
                export = pair[k]
                return load_block(generator, address, files[(export.model_name, export.version)],
                                  options.users, block_seconds, rate=options.serving_rate,
                                  arrivals=options.arrivals, seed=next(seeds))  # fmt: skip

            limit = options.disturbance_limit if services_ours else math.inf
            played = run_round(run_block, per_round, r % 2, 1000 * r + len(kind), monitor, limit)
            for k, (arm, export) in enumerate(zip(arms, pair, strict=True)):
                figures = export_figures(played, k)
                record = records.setdefault((arm.label, kind), {"arm": arm, "rounds": []})
                record["last"] = export
                record["rounds"].append({
                    "version": export.version, **figures,
                    "disturbance": _round_disturbance(played, k),
                    "block_pairs": played["pairs"], "discarded": played["discarded"],
                    "too_disturbed": played["too_disturbed"], "block_order_seed": played["seed"],
                })  # fmt: skip
    out = []
    for (_, _), record in records.items():
        arm, last, rounds = record["arm"], record["last"], record["rounds"]
        versions = sorted({x["version"] for x in rounds}, key=int)
        reported = [server_compute_ms(address, settings, last.model_name, v) for v in versions]
        compute = [c for c in reported if c is not None]
        out.append({
            "model_name": last.model_name, "version": last.version, "versions": versions,
            "arm": arm.label, "framework": arm.framework, "format": last.format,
            **_median_of_rounds(rounds), "rounds": rounds,
            "server_compute_ms": float(np.mean(compute)) if compute else None,
            "design": f"alternating blocks of {block_seconds:g} s, {per_round} block pairs a round,"
                      f" {load_words(options)}",
        })  # fmt: skip
    return out


def load_words(options: CompareOptions) -> str:
    """The serving blocks' load in words: the closed loop's callers or the open loop's rate."""
    if options.serving_rate:
        return (f"an open loop of {options.serving_rate:,g} requests/s ({options.arrivals}),"
                f" at most {OPEN_LOOP_BOUND} in flight")  # fmt: skip
    return f"{options.users} users in a closed loop"


def _round_disturbance(played: dict, k: int) -> dict:
    """Export k's blocks' disturbance in a round, summed (fractions over their seconds)."""
    blocks = [b["disturbance"] for p in played["pairs"] for b in p["blocks"] if b["export"] == k]
    seconds = sum(d["seconds"] for d in blocks) or 1e-9
    out = {key: sum(d[key] for d in blocks)
           for key in ("seconds", "active_cpu_s", "ours_cpu_s", "other_cpu_s", "steal_s")}  # fmt: skip
    for key in ("fraction", "outside_fraction", "resolution_fraction"):
        out[key] = sum(d[key] * d["seconds"] for d in blocks) / seconds
    return out


def _median_of_rounds(rounds: list[dict]) -> dict:
    """The figures of a served export pair's side as the median of its rounds (counts summed)."""

    def med(values) -> float:
        return float(np.median(list(values)))

    return {
        "requests": sum(s["requests"] for s in rounds),
        "failures": sum(s["failures"] for s in rounds),
        "requests_per_second": med(s["requests_per_second"] for s in rounds),
        "latency_ms": {k: med(s["latency_ms"][k] for s in rounds) for k in rounds[0]["latency_ms"]},
        "percentiles_ms": {
            k: med(s["percentiles_ms"].get(k, 0.0) for s in rounds)
            for k in rounds[0]["percentiles_ms"]
        },  # fmt: skip
    }


# The former design: whole Locust runs, one export at a time.


def repeat_exports(arms: list[Arm]) -> dict[tuple[str, str], list[tpb.ModelExport]]:
    """(arm, format): that arm's export of the format from each repeat both arms completed."""
    complete = [
        i
        for i in range(min(len(arm.jobs) for arm in arms))
        if all(arm.jobs[i].state == tpb.SUCCEEDED for arm in arms)
    ]
    out: dict[tuple[str, str], list[tpb.ModelExport]] = {}
    for arm in arms:
        for i in complete:
            for export in arm.jobs[i].exports:
                out.setdefault((arm.label, export.format), []).append(export)
    return out


def whole_rounds(
    address: str, settings: Settings, arms: list[Arm], options: CompareOptions, report_dir: Path
) -> list[dict]:
    """The former design: Locust on each served (arm, format) for `duration`, in rounds whose
    order alternates (forward, backward, ...); round r serves repeat r's exports. compare uses
    it still where the load generator cannot reach the gateway (TLS, or a token for inference:
    Locust sends both)."""
    from twinbench.experiments.loadtest import run_locust
    from twinbench.serving.statistics import server_compute_ms

    exports = repeat_exports(arms)
    keys = list(exports)
    rounds: dict[tuple[str, str], list[dict]] = {k: [] for k in keys}
    monitor = Monitor()
    for r in range(options.rounds):
        for key in keys if r % 2 == 0 else reversed(keys):
            export = exports[key][r % len(exports[key])]
            before = monitor.snapshot()
            users = max(options.users, 1)  # an open loop's rate and bound, shared by the users
            stats = run_locust(
                address, f"{export.model_name}:{export.version}", users, options.duration,
                options.serving_batch_size, None,
                report_dir / "locust" / f"{export.model_name}-v{export.version}-round{r + 1}",
                rate=options.serving_rate / users, arrivals=options.arrivals,
                max_in_flight=max(OPEN_LOOP_BOUND // users, 1),
            )  # fmt: skip
            disturbance = monitor.between(before, monitor.snapshot())
            rounds[key].append({"version": export.version, **stats, "disturbance": disturbance})
    out = []
    for key in keys:
        arm = next(a for a in arms if a.label == key[0])
        last = exports[key][-1]
        per_round = rounds[key]
        versions = sorted({s["version"] for s in per_round}, key=int)
        reported = [server_compute_ms(address, settings, last.model_name, v) for v in versions]
        compute = [c for c in reported if c is not None]
        out.append({
            "model_name": last.model_name, "version": last.version, "versions": versions,
            "arm": arm.label, "framework": arm.framework, "format": last.format,
            **_median_of_rounds(per_round), "rounds": per_round,
            "server_compute_ms": float(np.mean(compute)) if compute else None,
        })  # fmt: skip
    return out
