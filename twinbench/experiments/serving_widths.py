"""compare's serving design measured against the one it replaced, side by side, in an A/A run.

    python -m twinbench.experiments.serving_widths [--model mlp] [--repeats 3] [--trials 2]
        [--users 8] [--duration 5s] [--out FILE]

It starts the services here (free ports, TWINBENCH_HOME's state), trains an A/A pair of arms (torch,
torch; every repeat exports), then in each trial runs both designs on the same exports, one
after the other and in alternating order: the former (`whole_rounds`: one Locust run of
`--duration` per export and round, the rounds alternating the exports' order) and the current
(`serving_rounds.alternating_load_test`: the two exports of a pair in alternating short blocks).
For each design it prints each serving line's log-width (log high - log low of its 95% interval
over the export pairs) and its wall time, and, from the blocks, the export-to-export variance of
the log ratio: the variance between export pairs less what the blocks say their own noise was.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np

from twinbench.api import trainer_pb2 as tpb
from twinbench.config import load_settings
from twinbench.experiments.compare_lines import serving_lines
from twinbench.experiments.compare_plan import Arm, CompareOptions, plan_arms
from twinbench.experiments.serving_rounds import alternating_load_test, whole_rounds


def log_widths(arms: list[Arm], served: list[dict]) -> dict[str, float]:
    """Each serving line's log-width: log(high) - log(low) of its interval."""
    out = {}
    for line in serving_lines(arms, served, 0.95):
        e = line.estimate
        out[line.question] = (math.log(e.high) - math.log(e.low)
                              if e.low > 0 and math.isfinite(e.high) else math.inf)  # fmt: skip
    return out


def export_variance(arms: list[Arm], served: list[dict]) -> dict[str, dict]:
    """Per format: the variance of the log ratio between export pairs (the verdict's unit),
    the blocks' own share of it (mean squared log SE within a round), and their difference:
    what two exports of one model differ by, steadily."""
    first, second = arms[0].label, arms[1].label
    out = {}
    for fmt in sorted({s["format"] for s in served}):
        a = next(s for s in served if s["arm"] == first and s["format"] == fmt)
        b = next(s for s in served if s["arm"] == second and s["format"] == fmt)
        logs = [math.log(x["latency_ms"]["p50"] / y["latency_ms"]["p50"])
                for x, y in zip(a["rounds"], b["rounds"], strict=True)]  # fmt: skip
        within = [x["block_log_se"] ** 2 for x in a["rounds"] if x.get("block_log_se")]
        between = float(np.var(logs, ddof=1)) if len(logs) > 1 else math.nan
        noise = float(np.mean(within)) if within else 0.0
        out[fmt] = {"log_ratios": logs, "between_pairs": between, "within_rounds": noise,
                    "export_to_export": max(between - noise, 0.0)}  # fmt: skip
    return out


def main() -> None:
    from twinbench.client.stack import LocalStack
    from twinbench.experiments.compare import train_arms
    from twinbench.rpc.channel import Client

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="mlp")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--trials", type=int, default=2)
    parser.add_argument("--users", type=int, default=8)
    parser.add_argument("--duration", default="5s")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--train-samples", type=int, default=1024)
    parser.add_argument("--out", default="serving-widths.json")
    args = parser.parse_args()
    settings = load_settings()
    options = CompareOptions(
        frameworks=("torch", "torch"), repeats=args.repeats, users=args.users,
        duration=args.duration, rounds=args.repeats, serving_batch_size=1,
        reports=Path("reports"), sample=0, bench_seconds=0, command="serving_widths",
    )  # fmt: skip
    spec = tpb.JobSpec(model=args.model, dataset="mnist-5k", epochs=args.epochs,
                       train_samples=args.train_samples)  # fmt: skip
    trials = []
    report_dir = Path(args.out).resolve().with_suffix("")
    # Services of its own on free ports, started here: their CPU is this run's work.
    with LocalStack(settings, {"gateway": 0}, frameworks=("torch",)) as stack:
        address = stack.gateway_address
        arms = plan_arms(options.frameworks, args.repeats, 0)
        client = Client(address, settings)
        train_arms(client, arms, spec, args.repeats, export_all=True)
        client.close()
        for trial in range(args.trials):
            designs = [
                ("whole rounds", whole_rounds),
                ("alternating blocks", alternating_load_test),
            ]
            record: dict = {}
            for name, run in designs if trial % 2 == 0 else designs[::-1]:
                began = time.monotonic()
                served = run(address, settings, arms, options, report_dir / f"{trial}-{name}")
                record[name] = {"seconds": time.monotonic() - began,
                                "log_widths": log_widths(arms, served)}  # fmt: skip
                if name == "alternating blocks":
                    record["export_variance"] = export_variance(arms, served)
                print(f"trial {trial + 1}, {name}: {json.dumps(record[name])}", flush=True)
            print(f"trial {trial + 1}, export variance: {json.dumps(record['export_variance'])}")
            trials.append(record)
    Path(args.out).write_text(json.dumps({"options": vars(args), "trials": trials}, indent=1))


if __name__ == "__main__":
    main()
