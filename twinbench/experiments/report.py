"""The comparison report: report.md and a self-contained report.html, from results.json (twinbench.experiments.results)."""

from __future__ import annotations

import html
import json
from pathlib import Path

import numpy as np

from twinbench.experiments.cold_start import cold_start_and_cpu_table
from twinbench.experiments.report_kit import (
    COLORS,
    LABELS,
    REPEATED_ARM_COLORS,
    made,
    png,
    render_html,
    render_markdown,
    write_files,
)
from twinbench.experiments.verdicts import family_note

# --- plots ---


def arm_colors(results: dict) -> dict[str, str]:
    """A colour per arm: its framework's, or for an arm whose framework an earlier arm has (the
    second of an A/A run) one of its own."""
    colors: dict[str, str] = {}
    spare = iter(REPEATED_ARM_COLORS)
    for label, arm in results["training"].items():
        color = COLORS[arm["framework"]]
        colors[label] = next(spare) if color in colors.values() else color
    return colors


def arm_name(label: str) -> str:
    """ "torch" -> "PyTorch", "torch B" -> "PyTorch B"."""
    framework, _, suffix = label.partition(" ")
    return f"{LABELS.get(framework, framework)} {suffix}".strip()


def plots(results: dict) -> dict[str, bytes]:
    """PNG images by file name; the HTML embeds them, the Markdown links them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = arm_colors(results)
    training = {
        label: [r for r in arm["repeats"] if r["epochs"]]
        for label, arm in results["training"].items()
    }
    training = {label: runs for label, runs in training.items() if runs}
    images: dict[str, bytes] = {}
    if training:
        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        for label, runs in training.items():
            for i, run in enumerate(runs):  # one line per repeat: the spread is the point
                x = [e["epoch"] for e in run["epochs"]]
                for ax, key in zip(axes, ("loss", "accuracy"), strict=True):
                    first = i == 0
                    ax.plot(
                        x,
                        [e[f"train_{key}"] for e in run["epochs"]],
                        color=colors[label],
                        alpha=0.55,
                        lw=1,
                        label=f"{arm_name(label)} train" if first else None,
                    )
                    ax.plot(x, [e[f"val_{key}"] for e in run["epochs"]], color=colors[label],
                            alpha=0.55, lw=1, ls="--",
                            label=f"{arm_name(label)} validation" if first else None)  # fmt: skip
        for ax, key in zip(axes, ("loss", "accuracy"), strict=True):
            ax.set(xlabel="epoch", ylabel=key, title=f"{key.capitalize()}, one line per repeat")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        images["curves.png"] = png(fig)

        fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
        for k, (label, runs) in enumerate(training.items()):
            speeds = [r["steady_samples_per_second"] for r in runs]
            accs = [r["test_accuracy"] for r in runs]
            for ax, values in zip(axes, (speeds, accs), strict=True):
                jitter = np.linspace(-0.12, 0.12, len(values)) if len(values) > 1 else [0.0]
                ax.scatter(k + np.asarray(jitter), values, color=colors[label], zorder=3)
                low, mean, high = _mean_interval(values)
                ax.errorbar(k + 0.3, mean, yerr=[[mean - low], [high - mean]], fmt="s",
                            color=colors[label], capsize=6)  # fmt: skip
            for i, run in enumerate(runs):  # the windows within each job, faint
                w = run["window_samples_per_second"]
                axes[0].scatter(np.full(len(w), k - 0.3 + 0.04 * i), w, s=6, alpha=0.35,
                                color=colors[label])  # fmt: skip
        titles = ("Steady samples/s", "Test accuracy")
        for ax, title in zip(axes, titles, strict=True):
            ax.set_xticks(range(len(training)), [arm_name(label) for label in training])
            ax.set(title=f"{title}: repeats (dots), mean and 95% interval (square)")
            ax.title.set_fontsize(9)
            ax.grid(alpha=0.3, axis="y")
        axes[0].set_ylabel("samples/s (faint: windows within each job)")
        images["speed.png"] = png(fig)

        with_matrix = {
            label: runs[-1] for label, runs in training.items() if runs[-1]["confusion_matrix"]
        }
        if with_matrix:
            fig, axes = plt.subplots(
                1, len(with_matrix), figsize=(5.2 * len(with_matrix), 4.6), squeeze=False
            )
            for ax, (label, t) in zip(axes[0], with_matrix.items(), strict=True):
                matrix = np.array(t["confusion_matrix"])
                ax.imshow(matrix, cmap="Blues")
                for (r, c), v in np.ndenumerate(matrix):
                    if v:
                        color = "white" if v > matrix.max() / 2 else "black"
                        ax.text(c, r, str(v), ha="center", va="center", fontsize=7, color=color)
                ax.set(
                    title=f"{arm_name(label)}, last repeat: test accuracy {t['test_accuracy']:.4f}",
                    xlabel="predicted",
                    ylabel="true",
                    xticks=range(len(matrix)),
                    yticks=range(len(matrix)),
                )
            images["confusion.png"] = png(fig)

    served = [s for s in results["serving"]["models"] if s["requests"]]
    if served:
        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        names = [f"{s['model_name']} v{s['version']}" for s in served]
        for name, s in zip(names, served, strict=True):
            pct = s["percentiles_ms"]
            axes[0].plot(list(pct), list(pct.values()), marker="o", color=colors[s["arm"]],
                         ls="-" if s["format"] == "onnx" else "--", label=name)  # fmt: skip
        axes[0].set(
            xlabel="percentile",
            ylabel="latency (ms)",
            title="Latency distribution (median of rounds)",
            yscale="log",
        )
        axes[0].tick_params(axis="x", labelrotation=45)
        axes[0].legend(fontsize=8)
        axes[0].grid(alpha=0.3)
        axes[1].barh(names, [s["requests_per_second"] for s in served],
                     color=[colors[s["arm"]] for s in served], alpha=0.6)  # fmt: skip
        for i, s in enumerate(served):
            rounds = [r["requests_per_second"] for r in s.get("rounds", [])]
            axes[1].scatter(rounds, [i] * len(rounds), color="black", s=10, zorder=3)
        axes[1].set(xlabel="requests per second (bar: median; dots: rounds)", title="Throughput")
        axes[1].grid(alpha=0.3, axis="x")
        images["serving.png"] = png(fig)
    return images


def _mean_interval(values: list[float]) -> tuple[float, float, float]:
    """(low, mean, high): a 95% t interval of the mean; no width from a single value."""
    from scipy import stats as scipy_stats

    mean = float(np.mean(values))
    if len(values) < 2:
        return mean, mean, mean
    half = float(
        scipy_stats.t.ppf(0.975, len(values) - 1) * np.std(values, ddof=1) / np.sqrt(len(values))
    )
    return mean - half, mean, mean + half


# --- writing ---


def _mib(n: int) -> str:
    return f"{n / 2**20:.0f} MiB" if n else "-"


def _span(s: dict, fmt: str) -> str:
    """A summary's mean with its range over repeats."""
    if s["mean"] is None:
        return "-"
    if s["min"] == s["max"]:
        return fmt.format(s["mean"])
    return f"{fmt.format(s['mean'])} ({fmt.format(s['min'])} to {fmt.format(s['max'])})"


def _interval(v: dict) -> str:
    low, high = v["interval"]
    return f"{low:.3f} to {high:.3f}" if high is not None else "none"


def _verdict_detail(v: dict) -> str:
    parts = [v["detail"]] if v["detail"] else []
    # "detectable": at the stated power, at the level Holm asks of the line (docs/verdicts.md)
    power = f" at {v.get('power') or 0.8:.0%} power"
    if v.get("difference_points"):
        d, low, high = v["difference_points"]
        parts.append(f"{d:+.2f} points ({low:+.2f} to {high:+.2f})")
        if v.get("detectable_points") is not None:
            parts.append(f"detectable {v['detectable_points']:.2f} points{power}")
    elif v["detectable"] is not None:
        parts.append(f"detectable {v['detectable']:.1%}{power}")
    tost = f"two one-sided tests, {(1 - v['level']) / 2:.1%} each"
    holm = f"Holm p {v['p_holm']:.3g}" if v.get("family", True) else "outside Holm's family"
    parts.append(f"equivalence margin {v['margin']} ({tost}); {holm}; {v['method']}")
    return "; ".join(parts)


def tables(results: dict) -> list[tuple[str, list[str], list[list[str]]]]:
    """(title, headers, rows) for every table; the Markdown and the HTML both render these."""
    training = results["training"]
    design = results["design"]
    arms = list(training)
    last = {label: arm["repeats"][-1] for label, arm in training.items() if arm["repeats"]}
    verdict_title = (
        f"Verdict ({design['hardware']}; {design['repeats']} repeats;"
        f" {family_note(results['verdict'])})"
    )
    if "stopping" in results:  # pairs added until decided: anytime-valid tests, and why it stopped
        stop = results["stopping"]
        verdict_title += (
            f"; pairs added until decided, anytime-valid tests: stopped after {stop['pairs']}"
            f" pairs, {stop['stopped']}"
        )
    if design["a_a"]:
        verdict_title += ": an A/A run, one framework against itself: no line may name a winner"
    elif len(arms) > 2:
        verdict_title += f": {len(arms)} arms, every pair compared, all lines one Holm family"
    out = [
        (
            verdict_title,
            [
                "question",
                "first / second",
                "ratio",
                f"{design['level']:.0%} interval",
                "outcome",
                "winner",
                "detail",
            ],  # fmt: skip
            [
                [
                    v["question"],
                    f"{v['first']} / {v['second']}",
                    f"{v['ratio']:.3f}x",
                    _interval(v),
                    v["outcome"],
                    v["winner"] or "-",
                    _verdict_detail(v),
                ]
                for v in results["verdict"]
            ],
        ),
        (
            "Training (mean, and the range over repeats)",
            ["", *(arm_name(label) for label in arms)],
            [
                [label, *(fn(arm) for arm in training.values())]
                for label, fn in (
                    (
                        "repeats succeeded",
                        lambda a: f"{a['summary']['succeeded']} of {a['summary']['repeats']}",
                    ),
                    ("test accuracy", lambda a: _span(a["summary"]["test_accuracy"], "{:.4f}")),
                    (
                        "steady samples/s (geometric mean)",
                        lambda a: _span(a["summary"]["steady_samples_per_second"], "{:,.0f}"),
                    ),
                    (
                        "warm-up seconds",
                        lambda a: (
                            _span(a["summary"]["warmup_seconds"], "{:.3f}")
                            + f" (first {a['repeats'][-1]['warmup_steps']} steps)"
                            if a["repeats"]
                            else "-"
                        ),
                    ),
                    (
                        "train seconds (all epochs)",
                        lambda a: _span(a["summary"]["train_seconds"], "{:.2f}"),
                    ),
                    (
                        "peak host RSS (the job's process)",
                        lambda a: (
                            _mib(a["summary"]["peak_rss_bytes"])
                            + f", {_mib(a['summary']['peak_rss_rise_bytes'])} over its start"
                        ),
                    ),
                    ("peak GPU memory", lambda a: _mib(a["summary"]["peak_gpu_bytes"])),
                )
            ]
            + [
                [label, *(fn(last[a]) if a in last else "-" for a in arms)]
                for label, fn in (
                    (
                        "threads (intra-op / inter-op)",
                        lambda t: f"{t['threads']['intra_op']} / {t['threads']['inter_op']}",
                    ),
                    ("CPUs", lambda t: ",".join(map(str, t["cpu_set"])) or "-"),
                    ("parameters", lambda t: f"{t['parameter_count']:,}"),
                    ("device", lambda t: t["device"]),
                    ("framework", lambda t: t["framework_version"]),
                )
            ],  # fmt: skip
        ),
        (
            "Training, every repeat (in the order run)",
            [
                "arm",
                "seed",
                "job",
                "state",
                "test acc",
                "steady samples/s",
                "windows min to max",
                "warm-up s",
                "beside it",
            ],
            [
                [
                    arm_name(label),
                    str(r["seed"]),
                    r["job_id"],
                    r["state"] + (f": {r['error']}" if r["error"] else ""),
                    f"{r['test_accuracy']:.4f}",
                    f"{r['steady_samples_per_second']:,.0f}",
                    _windows(r["window_samples_per_second"]),
                    f"{r['warmup_seconds']:.3f}",
                    ", ".join(r["overlapped_jobs"]) or "nothing",
                ]
                for label, r in _in_run_order(results)
            ],
        ),  # fmt: skip
        (
            "Serving (median of rounds)",
            [
                "model",
                "version",
                "arm",
                "rounds",
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
                    arm_name(s["arm"]),
                    str(len(s["rounds"])),
                    str(s["requests"]),
                    str(s["failures"]),
                    f"{s['requests_per_second']:.1f}",
                    *(f"{s['latency_ms'][p]:.2f}" for p in ("p50", "p90", "p95", "p99")),
                    # The trainer's own time per request (ModelStatistics), when it gave one.
                    "-" if s.get("server_compute_ms") is None else f"{s['server_compute_ms']:.3f}",
                ]
                for s in results["serving"]["models"]
            ],
        ),  # fmt: skip
        *_serving_cost_table(results.get("serving_cost")),
        *cold_start_and_cpu_table(results.get("serving_cost") or {}),
        (
            "Hyperparameters (seeds: see Design)",
            ["", *(arm_name(label) for label in last)],
            [
                [key, *(str(t["hyperparameters"][key]) for t in last.values())]
                for key in next(iter(last.values()))["hyperparameters"]
            ]
            if last
            else [],
        ),
        (
            "Settings that differ by default, as set",
            ["", *(arm_name(label) for label in last)],
            [
                [key, *(t["fairness"].get(key, "-") for t in last.values())]
                for key in sorted({k for t in last.values() for k in t["fairness"]})
            ],
        ),
        (
            "Design and environment",
            ["", ""],
            [
                ["arms", " vs ".join(arm_name(label) for label in arms)],
                ["repeats", str(design["repeats"])],
                ["order", " ".join(arm_name(label) for label in design["order"])],
                *[
                    [f"seeds, {arm_name(k)}", ", ".join(map(str, v))]
                    for k, v in design["seeds"].items()
                ],
                ["hardware", design["hardware"]],
            ]
            + [[k, str(v)] for k, v in results["environment"].items()]
            + [
                [
                    "load",
                    f"{load_in_words(results['serving'])}, {results['serving']['duration']} per"
                    f" model and round, {results['serving']['rounds']} rounds, batch"
                    f" {results['serving']['batch_size']}, host {results['serving']['host']}"
                    + (
                        ", each export's tuned batching"
                        if results["serving"].get("tuned_batching")
                        else ""
                    ),
                ],
                ["command", results["command"]],
            ],
        ),  # fmt: skip
    ]
    return out + code_tables(results)


def load_in_words(load: dict) -> str:
    """The serving load: the closed loop's users, or the open loop's rate, arrivals and bound."""
    if load.get("rate"):
        return (f"open loop at {load['rate']:,g} requests/s per export ({load['arrivals']}"
                f" arrivals, at most {load['max_in_flight']} in flight)")  # fmt: skip
    return f"{load['users']} users"


def code_tables(results: dict) -> list[tuple[str, list[str], list[list[str]]]]:
    """The "Code" table of a report whose results carry the task's example scripts, else none."""
    if not results.get("code"):
        return []
    from twinbench.experiments.code_size import size_headers, size_rows

    return [
        (
            f"Code: {results['code']['task']} as a user writes it in each framework"
            " (Python's tokenizer and parser; comments, docstrings and blank lines apart)",
            size_headers(results["code"]),
            size_rows(results["code"]),
        )
    ]


def code_markdown(results: dict) -> str:
    """The compared frameworks' example scripts of the report's task, one after the other."""
    code = results.get("code")
    if not code:
        return ""
    lines = [f"## The {_count(code['scripts'])} scripts ({code['task']})", ""]
    for framework, script in code["scripts"].items():
        lines += [f"### {LABELS[framework]}: `{script['path']}`", "", "```python"]
        lines += [script["source"].rstrip("\n"), "```", ""]
    return "\n".join(lines)


def code_html(results: dict) -> str:
    """The compared frameworks' example scripts of the report's task, side by side."""
    code = results.get("code")
    if not code:
        return ""
    cells = "".join(
        f"<td style='vertical-align:top'><b>{LABELS[f]}</b>: <code>{html.escape(s['path'])}</code>"
        f"<pre style='font-size:12px;line-height:1.3;overflow-x:auto;max-width:560px'>{html.escape(s['source'])}</pre></td>"
        for f, s in code["scripts"].items()
    )
    count = _count(code["scripts"])
    return (
        f"<h2>The {count} scripts ({html.escape(code['task'])})</h2><table><tr>{cells}</tr></table>"
    )


def _count(items) -> str:
    return {2: "two", 3: "three"}.get(len(items), str(len(items)))


def _windows(windows: list[float]) -> str:
    return f"{min(windows):,.0f} to {max(windows):,.0f}" if windows else "-"


def _in_run_order(results: dict) -> list[tuple[str, dict]]:
    """Every repeat's record, in the order the jobs ran."""
    next_repeat = {label: 0 for label in results["training"]}
    out = []
    for label in results["design"]["order"]:
        repeats = results["training"][label]["repeats"]
        if next_repeat[label] < len(repeats):
            out.append((label, repeats[next_repeat[label]]))
            next_repeat[label] += 1
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
    "speed.png": "Training speed and test accuracy, per repeat",
    "confusion.png": "Confusion matrices",
    "serving.png": "Serving latency and throughput",
}


def markdown(results: dict, images: dict[str, bytes]) -> str:
    titled = {name: (IMAGE_TITLES[name], png) for name, png in images.items()}
    page = render_markdown(_title(results), made(results), tables(results), titled)
    return page + code_markdown(results)


def _title(results: dict) -> str:
    records = [r for arm in results["training"].values() for r in arm["repeats"]]
    arms = " vs ".join(arm_name(label) for label in results["training"])
    if not records:
        return f"{arms} comparison"
    h = records[-1]["hyperparameters"]
    return f"{h['model']} on {h['dataset']}, {arms}"


def html_page(results: dict, images: dict[str, bytes]) -> str:
    titled = {name: (IMAGE_TITLES[name], png) for name, png in images.items()}
    page = render_html(_title(results), made(results), tables(results), titled)
    return page.replace("</body></html>", code_html(results) + "</body></html>")


def write_report(directory: Path, results: dict) -> None:
    images = plots(results)
    write_files(
        directory,
        {
            **images,
            "results.json": json.dumps(results, indent=2).encode(),
            "report.md": markdown(results, images).encode(),
            "report.html": html_page(results, images).encode(),
        },
    )
