"""The sweep report: results.json (schema twinbench.sweep/v1), report.md and a self-contained report.html."""

from __future__ import annotations

import contextlib
import json
import math
import time
import warnings
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from twinbench.client.console import table
from twinbench.config import BOTH
from twinbench.experiments.report_kit import (
    COLORS,
    LABELS,
    environment,
    made,
    png,
    render_html,
    render_markdown,
    write_files,
)
from twinbench.experiments.sweep_studies import PAIRED, compared, format_params, paired_values
from twinbench.experiments.verdicts import describe, family_note
from twinbench.models.spec import Choice, FloatRange, Range

SCHEMA = "twinbench.sweep/v1"
SCHEMA_FILE = Path(__file__).parents[1] / "schemas" / "sweep-v1.schema.json"
IMAGE_TITLES = {
    "history.png": "Optimisation history",
    "importances.png": "Parameter importances",
    "paired.png": "Paired points: validation loss in both frameworks",
}


# --- gathering ---


def _number(value: float | None) -> float | None:
    """JSON has no infinity: a diverged run's loss is null (and marked diverged)."""
    return value if value is not None and math.isfinite(value) else None


def trial_record(trial: FrozenTrial, frameworks: tuple[str, str] = BOTH) -> dict:
    attrs = trial.user_attrs
    record = {
        "number": trial.number,
        "state": trial.state.name.lower(),
        "params": dict(trial.params),
        "epochs_trained": attrs.get("epochs trained"),
        "jobs": {f: attrs[f"job {f}"] for f in frameworks if f"job {f}" in attrs},
        "seconds": (trial.datetime_complete - trial.datetime_start).total_seconds()
        if trial.datetime_complete and trial.datetime_start
        else None,
        "diverged": bool(attrs.get("diverged", False)),
        "retry_of": attrs.get("retry_of"),
        "failure": attrs.get("failure"),
        "point": attrs.get("point"),
    }
    if trial.values is not None and len(trial.values) == 1:
        record["value"] = _number(trial.values[0])
    elif trial.values is not None:
        record["values"] = {f: _number(v) for f, v in zip(frameworks, trial.values, strict=True)}
    if trial.state == TrialState.PRUNED and trial.intermediate_values:
        step = max(trial.intermediate_values)
        record["pruned_at_epoch"] = step
        record["value"] = _number(trial.intermediate_values[step])
    return record


def importances(study: optuna.Study) -> dict[str, float]:
    """fANOVA importances over the completed trials (diverged ones at the worst finite loss);
    empty while too few trials have completed."""
    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    finite = [t.value for t in done if t.value is not None and math.isfinite(t.value)]
    if len(finite) < 2:
        return {}
    worst = max(finite)

    def objective(trial: FrozenTrial) -> float:
        value = trial.value
        return value if value is not None and math.isfinite(value) else worst

    with warnings.catch_warnings(), contextlib.suppress(Exception):
        warnings.simplefilter("ignore")
        found = optuna.importance.get_param_importances(study, target=objective)
        return {k: float(v) for k, v in found.items()}
    return {}


def space_record(space: dict[str, Range]) -> dict:
    out: dict[str, dict] = {}
    for name, r in space.items():
        if isinstance(r, Choice):
            out[name] = {"choice": list(r.values)}
        else:
            out[name] = {"low": r.low, "high": r.high,
                         "log": bool(isinstance(r, FloatRange) and r.log)}  # fmt: skip
    return out


def build_sweep_results(
    studies: dict[str, optuna.Study],
    options,
    space: dict[str, Range],
    storage: str,
    cross: list[dict],
    verdict: list[dict],
    seconds: float,
) -> dict:
    frameworks = compared(studies)
    tuned = {}
    for framework in frameworks:
        study = studies[framework]
        trials = [trial_record(t) for t in study.get_trials(deepcopy=False)]
        best = None
        with contextlib.suppress(ValueError):
            b = study.best_trial
            best = {"trial": b.number, "value": _number(b.value), "params": dict(b.params),
                    "epochs_trained": b.user_attrs.get("epochs trained")}  # fmt: skip
        tuned[framework] = {
            "study": study.study_name,
            "best": best,
            "trials": trials,
            "importances": importances(study),
        }
    points = []
    for t in paired_values(studies[PAIRED]):
        a, b = t.values
        points.append(
            {
                "point": t.user_attrs.get("point"),
                "trial": t.number,
                "params": dict(t.params),
                "val_loss": {frameworks[0]: _number(a), frameworks[1]: _number(b)},
                "ratio": a / b if math.isfinite(a) and math.isfinite(b) and b > 0 else None,
                "jobs": {f: t.user_attrs.get(f"job {f}") for f in frameworks},
            }
        )
    paired_trials = [
        trial_record(t, frameworks) for t in studies[PAIRED].get_trials(deepcopy=False)
    ]
    for entry in cross:
        for r in entry["repeats"]:
            r["val_loss"] = {f: _number(v) for f, v in r["val_loss"].items()}
    return {
        "schema": SCHEMA,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": options.command,
        "environment": environment(),
        "sweep": {
            "name": options.name,
            "frameworks": list(frameworks),
            "model": options.model,
            "dataset": options.dataset or "the model's",
            "trials": options.trials,
            "paired_points": options.paired,
            "epochs_cap": options.epochs,
            "train_samples": options.train_samples,
            "cross_repeats": options.cross_repeats,
            "seed": options.seed,
            "objective": "validation loss after the last epoch (minimised)",
            "sampler": f"TPE, seed {options.seed}, one study per framework",
            "pruner": "median of earlier trials at the same epoch, after"
            f" {options.prune_after} finished trials",
            "paired_sampler": f"scrambled Sobol sequence, seed {options.seed}; never pruned",
            "storage": storage,
            "search_space": space_record(space),
            "seconds": seconds,
            "level": options.level,
        },
        "tuned": tuned,
        "paired": {
            "study": studies[PAIRED].study_name,
            "points": points,
            "trials": paired_trials,
        },  # fmt: skip
        "cross_check": cross,
        "verdict": verdict,
    }


# --- plots ---


def plots(results: dict) -> dict[str, bytes]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    images: dict[str, bytes] = {}
    tuned = results["tuned"]
    if any(t["trials"] for t in tuned.values()):
        fig, ax = plt.subplots(figsize=(9, 4))
        values = []
        for framework, study in tuned.items():
            done = [t for t in study["trials"] if t["state"] == "complete" and t.get("value")]
            pruned = [t for t in study["trials"] if t["state"] == "pruned" and t.get("value")]
            color, name = COLORS[framework], LABELS[framework]
            # PyTorch filled, TensorFlow hollow and larger: both show where they coincide.
            look: dict[str, Any] = {"color": color, "s": 16} if framework == "torch" else {
                "facecolors": "none", "edgecolors": color, "s": 46}  # fmt: skip
            ax.scatter([t["number"] for t in done], [t["value"] for t in done], **look,
                       label=f"{name} completed")  # fmt: skip
            if pruned:
                ax.scatter([t["number"] for t in pruned], [t["value"] for t in pruned],
                           color=color, marker="x", s=24,
                           label=f"{name} pruned (loss at its last epoch)")  # fmt: skip
            best, xs, ys = math.inf, [], []
            for t in sorted(done, key=lambda t: t["number"]):
                best = min(best, t["value"])
                xs.append(t["number"])
                ys.append(best)
            ax.step(xs, ys, where="post", color=color, label=f"{name} best so far")
            values += [t["value"] for t in done + pruned]
        if values and max(values) > 10 * min(values):
            ax.set_yscale("log")
        ax.set(xlabel="trial", ylabel="validation loss")
        ax.legend(fontsize=8)
        images["history.png"] = png(fig)
    names = sorted({k for t in tuned.values() for k in t["importances"]})
    if names:
        fig, ax = plt.subplots(figsize=(9, 3.5))
        width = 0.4
        for i, (framework, study) in enumerate(tuned.items()):
            ax.barh([n + (i - 0.5) * width for n in range(len(names))],
                    [study["importances"].get(k, 0.0) for k in names], height=width,
                    color=COLORS[framework], label=LABELS[framework])  # fmt: skip
        ax.set_yticks(range(len(names)), names)
        ax.set(xlabel="importance (fANOVA, share of the loss's variance)")
        ax.legend(fontsize=8)
        images["importances.png"] = png(fig)
    points = [p for p in results["paired"]["points"] if p["ratio"] is not None]
    if points:
        fig, ax = plt.subplots(figsize=(5, 5))
        first, second = _pair(results)
        x = [p["val_loss"][second] for p in points]
        y = [p["val_loss"][first] for p in points]
        ax.scatter(x, y, s=18, color="#333", zorder=2)
        low, high = min(x + y) * 0.9, max(x + y) * 1.1
        ax.plot([low, high], [low, high], color="#999", linewidth=1)
        ax.set(xlabel=f"{LABELS[second]} validation loss", ylabel=f"{LABELS[first]} validation loss",
               xscale="log", yscale="log", title="each point: the same settings and seed")  # fmt: skip
        images["paired.png"] = png(fig)
    return images


# --- tables ---


def _loss(value: float | None) -> str:
    return f"{value:.4f}" if value is not None else "diverged"


def _params(params: dict) -> str:
    return format_params(params)


def _pair(results: dict) -> tuple[str, str]:
    """The sweep's two frameworks, first over second (torch, tf in sweeps from before the option)."""
    first, second = results["sweep"].get("frameworks", BOTH)
    return first, second


def tables(results: dict) -> list[tuple[str, list[str], list[list[str]]]]:
    out = []
    first, second = _pair(results)
    verdict = results["verdict"]
    if verdict:
        out.append((
            f"Verdicts (validation loss, lower is better; {family_note(verdict)})",
            ["question", "outcome", f"{first}/{second}", "interval", "pairs", "detail"],
            [[v["question"], v["winner"] or v["outcome"], f"{v['ratio']:.3f}",
              "none" if v["interval"][1] is None
              else f"{v['interval'][0]:.3f} to {v['interval'][1]:.3f}",
              str(v["repeats"]), f"{v['detail']}; Holm p {v['p_holm']:.3g}; {v['method']}"]
             for v in verdict],
        ))  # fmt: skip
    out.append((
        "Best per framework (tuned separately)",
        ["framework", "validation loss", "trial", "epochs trained", "settings"],
        [[LABELS[f], _loss(s["best"]["value"]), str(s["best"]["trial"]),
          str(s["best"]["epochs_trained"]), _params(s["best"]["params"])]
         if s["best"] else [LABELS[f], "-", "-", "-", "no completed trial"]
         for f, s in results["tuned"].items()],
    ))  # fmt: skip
    out.append(("Trials", ["study", "completed", "pruned", "diverged", "failed (tried again)"],
                [trial_counts(name, trials) for name, trials in _all_trials(results)]))  # fmt: skip
    names = sorted({k for s in results["tuned"].values() for k in s["importances"]})
    if names:
        out.append((
            "Parameter importances (fANOVA)",
            ["parameter", *(LABELS[f] for f in results["tuned"])],
            [[n, *(f"{s['importances'].get(n, 0):.3f}" for s in results["tuned"].values())]
             for n in names],
        ))  # fmt: skip
    points = results["paired"]["points"]
    if points:
        out.append((
            "Paired points (the same settings and seed in both frameworks)",
            ["point", first, second, f"{first}/{second}", "settings"],
            [[str(p["point"]), _loss(p["val_loss"][first]), _loss(p["val_loss"][second]),
              f"{p['ratio']:.3f}" if p["ratio"] is not None else "-", _params(p["params"])]
             for p in points],
        ))  # fmt: skip
    rows = [[LABELS[c["settings_of"]] + "'s best", str(r["seed"]), _loss(r["val_loss"].get(first)),
             _loss(r["val_loss"].get(second))]
            for c in results["cross_check"] for r in c["repeats"]]  # fmt: skip
    if rows:
        out.append(("Cross-check: each framework's best settings in both", ["settings", "seed",
                    first, second], rows))  # fmt: skip
    s = results["sweep"]
    out.append((
        "Sweep",
        ["setting", "value"],
        [["model", s["model"]], ["dataset", s["dataset"]],
         ["trials per framework", str(s["trials"])], ["paired points", str(s["paired_points"])],
         ["epochs cap", str(s["epochs_cap"] or "none")], ["objective", s["objective"]],
         ["sampler", s["sampler"]], ["pruner", s["pruner"]], ["paired points from", s["paired_sampler"]],
         ["storage", s["storage"]], ["took", f"{s['seconds'] / 60:.1f} min"]],
    ))  # fmt: skip
    return out


def _all_trials(results: dict) -> list[tuple[str, list[dict]]]:
    out = [(s["study"], s["trials"]) for s in results["tuned"].values()]
    return out + [(results["paired"]["study"], results["paired"]["trials"])]


def trial_counts(name: str, trials: list[dict]) -> list[str]:
    def count(state: str) -> int:
        return sum(t["state"] == state for t in trials)

    return [name, str(count("complete")), str(count("pruned")),
            str(sum(t["diverged"] for t in trials)), str(count("fail"))]  # fmt: skip


# --- writing and printing ---


def _title(results: dict) -> str:
    s = results["sweep"]
    return f"sweep {s['name']}: {s['model']}, PyTorch and TensorFlow"


def write_sweep_report(directory: Path, results: dict) -> None:
    images = plots(results)
    titled = {name: (IMAGE_TITLES[name], png) for name, png in images.items()}
    sections = tables(results)
    write_files(
        directory,
        {
            **images,
            "results.json": json.dumps(results, indent=2).encode(),
            "report.md": render_markdown(_title(results), made(results), sections, titled).encode(),
            "report.html": render_html(_title(results), made(results), sections, titled).encode(),
        },
    )


def print_sweep_summary(results: dict) -> None:
    print(
        table(
            ["framework", "best val loss", "trial", "settings"],
            [[LABELS[f], _loss(s["best"]["value"]), str(s["best"]["trial"]),
              _params(s["best"]["params"])] if s["best"] else [LABELS[f], "-", "-", "-"]
             for f, s in results["tuned"].items()],
        )
    )  # fmt: skip
    print(table(["study", "completed", "pruned", "diverged", "failed (tried again)"],
                [trial_counts(n, t) for n, t in _all_trials(results)]))  # fmt: skip
    verdict = results["verdict"]
    if verdict:
        print(f"verdicts ({verdict[0]['hardware']}; {family_note(verdict)}):")
    for v in verdict:
        print("  " + describe(v))
    print(f"took {results['sweep']['seconds'] / 60:.1f} min")
