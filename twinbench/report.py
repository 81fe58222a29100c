"""The comparison report: results.json (schema twinbench.results/v1), report.md and a self-contained report.html."""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

from twinbench.api import trainer_pb2 as tpb
from twinbench.jobs import state_name

SCHEMA = "twinbench.results/v1"
SCHEMA_FILE = Path(__file__).with_name("schemas") / "results-v1.schema.json"
COLORS = {"torch": "#ee4c2c", "tf": "#ff8f00"}
LABELS = {"torch": "PyTorch", "tf": "TensorFlow"}
PERCENTILES = ("50%", "66%", "75%", "80%", "90%", "95%", "98%", "99%", "99.9%", "99.99%", "100%")


# --- gathering ---


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment() -> dict:
    return {
        "host": platform.node(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count() or 0,
    }


def training_record(job: tpb.Job) -> dict:
    """One framework's job as results.json stores it; epoch 1 counts as warm-up."""
    epochs = [
        {
            "epoch": e.epoch,
            "train_loss": e.train_loss,
            "train_accuracy": e.train_accuracy,
            "val_loss": e.val_loss,
            "val_accuracy": e.val_accuracy,
            "seconds": e.seconds,
            "samples_per_second": e.samples_per_second,
        }
        for e in job.epochs
    ]
    # The first epoch carries one-time costs (tracing, allocator warm-up); the rest is steady state.
    steady = epochs[1:] or epochs
    n = job.num_classes
    matrix = np.array(job.confusion_matrix, dtype=int).reshape(n, n).tolist() if n else []
    spec, opt = job.spec, job.spec.optimizer
    return {
        "job_id": job.id,
        "state": state_name(job.state),
        "error": job.error,
        "device": job.device,
        "framework_version": job.framework_version,
        "parameter_count": job.parameter_count,
        "hyperparameters": {
            "model": spec.model,
            "dataset": spec.dataset,
            "epochs": spec.epochs,
            "batch_size": spec.batch_size,
            "optimizer": opt.name,
            "learning_rate": opt.learning_rate,
            "momentum": opt.momentum,
            "epsilon": opt.epsilon,
            "seed": spec.seed,
            "init": spec.init,
        },
        "epochs": epochs,
        "train_seconds": job.train_seconds,
        "warmup_step_seconds": job.warmup_seconds,
        "fairness": dict(job.fairness),
        "warmup_epoch_seconds": epochs[0]["seconds"] if epochs else 0.0,
        "steady_epoch_seconds": float(np.mean([e["seconds"] for e in steady])) if steady else 0.0,
        "steady_samples_per_second": job.steady_samples_per_second,
        "test_loss": job.test_loss,
        "test_accuracy": job.test_accuracy,
        "confusion_matrix": matrix,
        "peak_rss_bytes": job.peak_rss_bytes,
        "peak_gpu_bytes": job.peak_gpu_bytes,
        "exports": [
            {
                "model_name": e.model_name,
                "version": e.version,
                "format": e.format,
                "sha256": e.sha256,
                "max_abs_diff": e.max_abs_diff,
            }
            for e in job.exports
        ],
    }


def read_locust_stats(prefix: Path, name: str) -> dict:
    """The row for `name` in Locust's <prefix>_stats.csv, latencies in milliseconds."""
    with open(f"{prefix}_stats.csv", newline="") as f:
        rows = {row["Name"]: row for row in csv.DictReader(f)}
    row = rows.get(name) or rows["Aggregated"]
    pct = {p.rstrip("%"): _number(row.get(p)) for p in PERCENTILES}
    return {
        "requests": int(row["Request Count"]),
        "failures": int(row["Failure Count"]),
        "requests_per_second": _number(row["Requests/s"]),
        "latency_ms": {
            "mean": _number(row["Average Response Time"]),
            "min": _number(row["Min Response Time"]),
            "max": _number(row["Max Response Time"]),
            "p50": pct["50"],
            "p90": pct["90"],
            "p95": pct["95"],
            "p99": pct["99"],
        },
        "percentiles_ms": pct,
    }


def _number(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return 0.0  # Locust writes "N/A" when a run had no requests


def verdicts(training: dict, serving: list[dict]) -> list[dict]:
    """Short answers with their ratios: faster to train, more accurate, faster to serve."""
    out = []
    done = {fw: t for fw, t in training.items() if t["state"] == "succeeded"}
    if len(done) == 2:
        (a, ta), (b, tb) = sorted(done.items(), key=lambda kv: kv[1]["steady_epoch_seconds"])
        out.append(
            {
                "question": "faster to train (steady-state seconds per epoch)",
                "winner": a,
                "ratio": tb["steady_epoch_seconds"] / max(ta["steady_epoch_seconds"], 1e-12),
                "detail": f"{ta['steady_epoch_seconds']:.3f} s vs {tb['steady_epoch_seconds']:.3f} s",
            }
        )
        (a, ta), (b, tb) = sorted(done.items(), key=lambda kv: -kv[1]["test_accuracy"])
        out.append(
            {
                "question": "more accurate (test accuracy)",
                "winner": a if ta["test_accuracy"] > tb["test_accuracy"] else "tie",
                "ratio": ta["test_accuracy"] / max(tb["test_accuracy"], 1e-12),
                "detail": f"{ta['test_accuracy']:.4f} vs {tb['test_accuracy']:.4f}",
            }
        )
    by_format: dict[str, list[dict]] = {}
    for s in serving:
        if s["requests"]:
            by_format.setdefault("onnx" if s["format"] == "onnx" else "native", []).append(s)
    for kind, runs in sorted(by_format.items()):
        if len(runs) < 2:
            continue
        runs = sorted(runs, key=lambda s: s["latency_ms"]["p50"] or float("inf"))
        best, other = runs[0], runs[1]
        out.append(
            {
                "question": f"faster to serve, {kind} format (p50 latency)",
                "winner": best["model_name"],
                "ratio": other["latency_ms"]["p50"] / max(best["latency_ms"]["p50"], 1e-12),
                "detail": f"{best['latency_ms']['p50']:.1f} ms vs {other['latency_ms']['p50']:.1f} ms"
                f" ({other['model_name']})",
            }
        )
    served = [s for s in serving if s["requests"]]
    if served:
        fastest = max(served, key=lambda s: s["requests_per_second"])
        slowest = min(served, key=lambda s: s["requests_per_second"])
        out.append(
            {
                "question": "most requests per second, any format",
                "winner": fastest["model_name"],
                "ratio": fastest["requests_per_second"]
                / max(slowest["requests_per_second"], 1e-12),
                "detail": f"{fastest['requests_per_second']:.1f} req/s vs"
                f" {slowest['requests_per_second']:.1f} ({slowest['model_name']})",
            }
        )
    return out


def build_results(
    jobs: list[tpb.Job],
    serving: list[dict],
    load: dict,
    command: str,
    serving_cost: dict | None = None,
) -> dict:
    """`serving_cost`: {"figures": [...], "summary": [...], "note": ...} from twinbench.bench."""
    training = {job.spec.framework: training_record(job) for job in jobs}
    return {
        "schema": SCHEMA,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": command,
        "environment": environment(),
        "training": training,
        "serving": {**load, "models": serving},
        "verdict": verdicts(training, serving),
        **({"serving_cost": serving_cost} if serving_cost else {}),
    }


# --- plots ---


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return buffer.getvalue()


def plots(results: dict) -> dict[str, bytes]:
    """PNG images by file name; the HTML embeds them, the Markdown links them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    training = {fw: t for fw, t in results["training"].items() if t["epochs"]}
    images: dict[str, bytes] = {}
    if training:
        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        for fw, t in training.items():
            x = [e["epoch"] for e in t["epochs"]]
            for ax, key in zip(axes, ("loss", "accuracy"), strict=True):
                ax.plot(
                    x,
                    [e[f"train_{key}"] for e in t["epochs"]],
                    color=COLORS[fw],
                    label=f"{LABELS[fw]} train",
                )
                ax.plot(
                    x,
                    [e[f"val_{key}"] for e in t["epochs"]],
                    color=COLORS[fw],
                    ls="--",
                    label=f"{LABELS[fw]} validation",
                )
        for ax, key in zip(axes, ("loss", "accuracy"), strict=True):
            ax.set(xlabel="epoch", ylabel=key, title=key.capitalize())
            ax.grid(alpha=0.3)
            ax.legend()
        images["curves.png"] = _png(fig)

        fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
        width = 0.4
        for i, (fw, t) in enumerate(training.items()):
            x = np.array([e["epoch"] for e in t["epochs"]]) + (i - 0.5) * width
            colors = [COLORS[fw]] * len(x)
            bars = axes[0].bar(
                x, [e["seconds"] for e in t["epochs"]], width, color=colors, label=LABELS[fw]
            )
            bars[0].set_hatch("//")  # the warm-up epoch
            axes[1].bar(
                x,
                [e["samples_per_second"] for e in t["epochs"]],
                width,
                color=colors,
                label=LABELS[fw],
            )
        axes[0].set(xlabel="epoch (hatched: warm-up)", ylabel="seconds", title="Seconds per epoch")
        axes[1].set(xlabel="epoch", ylabel="samples/s", title="Training throughput")
        epochs = sorted({e["epoch"] for t in training.values() for e in t["epochs"]})
        for ax in axes:
            ax.set_xticks(epochs)
            ax.legend()
            ax.grid(alpha=0.3, axis="y")
        images["speed.png"] = _png(fig)

        with_matrix = {fw: t for fw, t in training.items() if t["confusion_matrix"]}
        if with_matrix:
            fig, axes = plt.subplots(
                1, len(with_matrix), figsize=(5.2 * len(with_matrix), 4.6), squeeze=False
            )
            for ax, (fw, t) in zip(axes[0], with_matrix.items(), strict=True):
                matrix = np.array(t["confusion_matrix"])
                ax.imshow(matrix, cmap="Blues")
                for (r, c), v in np.ndenumerate(matrix):
                    if v:
                        ax.text(
                            c,
                            r,
                            str(v),
                            ha="center",
                            va="center",
                            fontsize=7,
                            color="white" if v > matrix.max() / 2 else "black",
                        )
                ax.set(
                    title=f"{LABELS[fw]}: test accuracy {t['test_accuracy']:.4f}",
                    xlabel="predicted",
                    ylabel="true",
                    xticks=range(len(matrix)),
                    yticks=range(len(matrix)),
                )
            images["confusion.png"] = _png(fig)

    served = [s for s in results["serving"]["models"] if s["requests"]]
    if served:
        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        for s in served:
            pct = s["percentiles_ms"]
            axes[0].plot(
                list(pct),
                list(pct.values()),
                marker="o",
                color=COLORS[s["framework"]],
                ls="-" if s["format"] == "onnx" else "--",
                label=s["model_name"],
            )
        axes[0].set(
            xlabel="percentile", ylabel="latency (ms)", title="Latency distribution", yscale="log"
        )
        axes[0].tick_params(axis="x", labelrotation=45)
        axes[0].legend(fontsize=8)
        axes[0].grid(alpha=0.3)
        names = [s["model_name"] for s in served]
        axes[1].barh(
            names,
            [s["requests_per_second"] for s in served],
            color=[COLORS[s["framework"]] for s in served],
        )
        axes[1].set(xlabel="requests per second", title="Throughput")
        axes[1].grid(alpha=0.3, axis="x")
        images["serving.png"] = _png(fig)
    return images


# --- writing ---


def _mib(n: int) -> str:
    return f"{n / 2**20:.0f} MiB" if n else "-"


def tables(results: dict) -> list[tuple[str, list[str], list[list[str]]]]:
    """(title, headers, rows) for every table; the Markdown and the HTML both render these."""
    training = results["training"]
    out = [
        (
            "Verdict",
            ["question", "winner", "ratio", "detail"],
            [
                [
                    v["question"],
                    LABELS.get(v["winner"], v["winner"]),
                    f"{v['ratio']:.2f}x",
                    v["detail"],
                ]
                for v in results["verdict"]
            ],
        ),
        (
            "Training",
            ["", *(LABELS[fw] for fw in training)],
            [
                [label, *(fn(t) for t in training.values())]
                for label, fn in (
                    ("state", lambda t: t["state"] + (f": {t['error']}" if t["error"] else "")),
                    ("test accuracy", lambda t: f"{t['test_accuracy']:.4f}"),
                    ("test loss", lambda t: f"{t['test_loss']:.4f}"),
                    ("train seconds (all epochs)", lambda t: f"{t['train_seconds']:.2f}"),
                    ("warm-up: first step seconds", lambda t: f"{t['warmup_step_seconds']:.3f}"),
                    ("warm-up: first epoch seconds", lambda t: f"{t['warmup_epoch_seconds']:.2f}"),
                    ("steady epoch seconds", lambda t: f"{t['steady_epoch_seconds']:.2f}"),
                    ("steady samples/s", lambda t: f"{t['steady_samples_per_second']:,.0f}"),
                    ("peak host RSS (process)", lambda t: _mib(t["peak_rss_bytes"])),
                    ("peak GPU memory", lambda t: _mib(t["peak_gpu_bytes"])),
                    ("parameters", lambda t: f"{t['parameter_count']:,}"),
                    ("device", lambda t: t["device"]),
                    ("framework", lambda t: t["framework_version"]),
                )
            ],
        ),
        (
            "Serving",
            [
                "model",
                "version",
                "requests",
                "failures",
                "req/s",
                "p50 ms",
                "p90 ms",
                "p95 ms",
                "p99 ms",
                "server compute ms",
            ],
            [
                [
                    s["model_name"],
                    s["version"],
                    str(s["requests"]),
                    str(s["failures"]),
                    f"{s['requests_per_second']:.1f}",
                    *(f"{s['latency_ms'][p]:.1f}" for p in ("p50", "p90", "p95", "p99")),
                    # The trainer's own time per request (ModelStatistics): absent in older results.
                    "" if s.get("server_compute_ms") is None else f"{s['server_compute_ms']:.3f}",
                ]
                for s in results["serving"]["models"]
            ],
        ),
        *_serving_cost_table(results.get("serving_cost")),
        (
            "Hyperparameters",
            ["", *(LABELS[fw] for fw in training)],
            [
                [key, *(str(t["hyperparameters"][key]) for t in training.values())]
                for key in next(iter(training.values()))["hyperparameters"]
            ]
            if training
            else [],
        ),
        (
            "Settings that differ by default, as set",
            ["", *(LABELS[fw] for fw in training)],
            [
                [key, *(t["fairness"].get(key, "-") for t in training.values())]
                for key in sorted({k for t in training.values() for k in t["fairness"]})
            ],
        ),
        (
            "Environment",
            ["", ""],
            [[k, str(v)] for k, v in results["environment"].items()]
            + [
                [
                    "load",
                    f"{results['serving']['users']} users, {results['serving']['duration']},"
                    f" batch {results['serving']['batch_size']}, host {results['serving']['host']}",
                ],
                ["command", results["command"]],
            ],
        ),
    ]
    return out


def _serving_cost_table(cost: dict | None) -> list[tuple[str, list[str], list[list[str]]]]:
    if not cost:
        return []
    in_short = [
        [r["model"], f"{r['direct_p50_ms']:.3f}", f"{r['gateway_p50_ms']:.3f}",
         f"{r['gateway_adds_ms']:+.3f}", f"{r['unbatched_rps']:,.0f}", f"{r['batched_rps']:,.0f}",
         f"{r['batching_gain']:.2f}x"]
        for r in cost["summary"]
    ]  # fmt: skip
    top = max((r["concurrency"] for r in cost["summary"]), default=0)
    figures = [
        [f["path"], f["model"], str(f["concurrency"]), f"{f['p50_ms']:.3f}", f"{f['p99_ms']:.3f}",
         f"{f['rps']:,.0f}"]
        for f in cost["figures"]
    ]  # fmt: skip
    setup = "".join(
        f"; {label}: {cost[key]}"
        for key, label in (("gateway_front", "gateway front"), ("load_generator", "load from"))
        if key in cost
    )
    return [
        (
            f"Serving cost: {cost['note']}{setup}",
            [
                "model",
                "p50 ms direct, c=1",
                "through the gateway",
                "the gateway adds",
                f"req/s c={top}",
                "with batching",
                "batching gain",
            ],
            in_short,
        ),  # fmt: skip
        (
            "Serving cost, every figure",
            ["path", "model", "concurrency", "p50 ms", "p99 ms", "req/s"],
            figures,
        ),
    ]


IMAGE_TITLES = {
    "curves.png": "Loss and accuracy",
    "speed.png": "Training speed",
    "confusion.png": "Confusion matrices",
    "serving.png": "Serving latency and throughput",
}


def markdown(results: dict, images: dict[str, bytes]) -> str:
    lines = [
        f"# twinbench: {_title(results)}",
        "",
        f"Made {results['created_at']} by `{results['command']}`.",
        "",
    ]
    for title, headers, rows in tables(results):
        lines += [f"## {title}", "", "| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
        lines += ["| " + " | ".join(cell.replace("|", "/") for cell in row) + " |" for row in rows]
        lines.append("")
    for name in images:
        lines += [f"## {IMAGE_TITLES[name]}", "", f"![{IMAGE_TITLES[name]}]({name})", ""]
    return "\n".join(lines)


def _title(results: dict) -> str:
    training = results["training"]
    if not training:
        return "comparison"
    h = next(iter(training.values()))["hyperparameters"]
    return f"{h['model']} on {h['dataset']}, PyTorch vs TensorFlow"


def html_page(results: dict, images: dict[str, bytes]) -> str:
    esc = html.escape
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>twinbench: {esc(_title(results))}</title>",
        "<style>body{font:14px/1.45 system-ui,sans-serif;max-width:1150px;margin:2em auto;padding:0 1em;color:#222}"
        "table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ddd;padding:4px 10px;text-align:left}"
        "th{background:#f4f4f4}img{max-width:100%}code{background:#f4f4f4;padding:1px 4px}</style>",
        "</head><body>",
        f"<h1>twinbench: {esc(_title(results))}</h1>",
        f"<p>Made {esc(results['created_at'])} by <code>{esc(results['command'])}</code>.</p>",
    ]
    for title, headers, rows in tables(results):
        parts.append(
            f"<h2>{esc(title)}</h2><table><tr>"
            + "".join(f"<th>{esc(h)}</th>" for h in headers)
            + "</tr>"
        )
        parts += ["<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>" for row in rows]
        parts.append("</table>")
        if title == "Verdict":
            for name, png in images.items():
                data = base64.b64encode(png).decode()
                parts.append(
                    f"<h2>{esc(IMAGE_TITLES[name])}</h2>"
                    f"<img alt='{esc(IMAGE_TITLES[name])}' src='data:image/png;base64,{data}'>"
                )
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(directory: Path, results: dict) -> None:
    """Writes every file of the report; each appears whole (written aside, then renamed)."""
    directory.mkdir(parents=True, exist_ok=True)
    images = plots(results)
    files: dict[str, bytes] = {name: png for name, png in images.items()}
    files["results.json"] = json.dumps(results, indent=2).encode()
    files["report.md"] = markdown(results, images).encode()
    files["report.html"] = html_page(results, images).encode()
    for name, data in files.items():
        tmp = directory / f".{name}.tmp"
        tmp.write_bytes(data)
        tmp.replace(directory / name)
