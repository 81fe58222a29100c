"""`twinbench compare --model dqn_cartpole`: many seeds per framework on one budget of
environment steps, judged by solve rate and the interquartile mean of episodes to solve.

Reinforcement learning's results vary far more from seed to seed than supervised training's,
so one run says nothing: each framework runs the same seeds (each seed the same environment
resets, exploration draws and replay samples in both, twinbench/training/rl.py), in the order
A B B A ..., on the same budget; a run that does not solve within it counts as unsolved (censored
at the budget), not as missing, and a run that failed counts as unsolved too, with a line of its
own. The verdicts are paired permutation tests over seeds (twinbench/experiments/verdicts.py),
exact up to 12 seeds, each saying its smallest attainable p; each arm's own summary gives
percentile bootstrap intervals over its seeds.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import numpy as np

from twinbench.api import trainer_pb2 as tpb
from twinbench.client.stack import services
from twinbench.config import Settings
from twinbench.experiments.code_size import compare_task
from twinbench.experiments.compare import train_arms
from twinbench.experiments.compare_lines import hardware_of
from twinbench.experiments.compare_plan import (
    Arm,
    CompareOptions,
    arm_pairs,
    plan_arms,
    run_order,
)
from twinbench.experiments.report import (
    code_html,
    code_markdown,
    code_tables,
)
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
from twinbench.experiments.rl_verdicts import bootstrap_interval, iqm, paired_iqm_ratio
from twinbench.experiments.verdicts import Line, decide, failed_runs, family_note
from twinbench.jobs.request import state_name
from twinbench.rpc.channel import Client

SCHEMA = "twinbench.rl-results/v1"


def episodes_to_solve(job: tpb.Job) -> float:
    """The episode that solved it; infinity when it did not within the budget."""
    r = job.reinforcement
    return float(r.episodes_to_solve) if r.episodes_to_solve else math.inf


def minutes_to_solve(job: tpb.Job) -> float:
    r = job.reinforcement
    return r.seconds_to_solve / 60 if r.episodes_to_solve else math.inf


def run_record(job: tpb.Job) -> dict:
    r = job.reinforcement
    return {
        "job_id": job.id,
        "seed": job.spec.seed,
        "state": state_name(job.state),
        "episode_rewards": list(r.episode_rewards),
        "env_steps": r.env_steps,
        "episodes_to_solve": r.episodes_to_solve or None,
        "steps_to_solve": r.steps_to_solve or None,
        "seconds_to_solve": r.seconds_to_solve or None,
        "steps_per_second": r.steps_per_second,
        "network_seconds": r.network_seconds,
        "environment_seconds": r.environment_seconds,
        "evaluations": r.evaluations,
        "evaluation_rewards": list(r.evaluation_rewards),
        "evaluation_env_steps": r.evaluation_env_steps,
        "evaluation_seconds": r.evaluation_seconds,
        "train_seconds": job.train_seconds,
        "overlapped_jobs": list(job.overlapped_jobs),
    }


def failed(job: tpb.Job) -> bool:
    """A run that did not finish (crashed or cancelled): a result, counted as unsolved."""
    return job.state != tpb.SUCCEEDED


def summarize(jobs: list[tpb.Job], level: float) -> dict:
    solved = [1.0 if j.reinforcement.episodes_to_solve else 0.0 for j in jobs]
    episodes = [episodes_to_solve(j) for j in jobs]
    rate = bootstrap_interval(solved, np.mean, level)
    middle = bootstrap_interval(episodes, iqm, level)
    minutes = bootstrap_interval([minutes_to_solve(j) for j in jobs], iqm, level)
    speed = bootstrap_interval([j.reinforcement.steps_per_second for j in jobs], np.mean, level)
    return {
        "seeds": len(jobs),
        "failed": sum(failed(j) for j in jobs),
        "solve_rate": list(rate),
        "iqm_episodes_to_solve": [x if math.isfinite(x) else None for x in middle],
        "iqm_minutes_to_solve": [x if math.isfinite(x) else None for x in minutes],
        "steps_per_second": list(speed),
        "network_share": float(
            np.mean([j.reinforcement.network_seconds / max(j.train_seconds, 1e-9) for j in jobs])
        ),
    }


def run_rl_compare(
    settings: Settings, gateway: str, base_spec: tpb.JobSpec, options: CompareOptions
) -> int:
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    report_dir = options.reports.resolve() / f"{stamp}-{base_spec.model}"
    arms = plan_arms(options.frameworks, options.repeats, base_spec.seed)
    with services(settings, gateway, options.frameworks) as (address, _):
        client = Client(address, settings)
        train_arms(client, arms, base_spec, options.repeats)
        client.close()
    first = arms[0]
    budget = first.jobs[0].spec.env_steps if first.jobs else 0
    lines = verdict_lines(arms, options.level)
    results = {
        "schema": SCHEMA,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": options.command,
        "environment": environment(),
        "design": {
            "frameworks": list(options.frameworks),
            "seeds": {arm.label: arm.seeds for arm in arms},
            "order": [arms[k].label for _, k in run_order(options.repeats, len(arms))],
            "env_steps_budget": budget,
            "hardware": hardware_of(arms),
            "level": options.level,
        },
        "arms": {
            arm.label: {
                "framework": arm.framework,
                "summary": summarize(arm.jobs, options.level),
                "runs": [run_record(j) for j in arm.jobs],
            }
            for arm in arms
        },
        "verdict": decide(lines, hardware_of(arms), options.level),
    }
    code = compare_task(base_spec.model, frameworks=[arm.framework for arm in arms])  # coder's view
    if code:
        results["code"] = code
    write_rl_report(report_dir, results)
    for row in summary_rows(results):
        print("  ".join(row))
    print(f"report: {report_dir / 'report.html'}")
    finished = [job for arm in arms for job in arm.jobs]
    for job in finished:
        if job.state != tpb.SUCCEEDED:
            print(f"{job.id} {state_name(job.state)}: {job.error}", file=sys.stderr)
    return 0 if all(j.state == tpb.SUCCEEDED for j in finished) else 1


def verdict_lines(arms: list[Arm], level: float) -> list[Line]:
    """Every pair of arms' lines (one pair for two arms, three for three)."""
    return [line for pair in arm_pairs(arms) for line in _pair_lines(list(pair), level)]


def _pair_lines(arms: list[Arm], level: float) -> list[Line]:
    """Episodes and minutes to solve, seeds paired; every run counts. An unsolved run is
    censored at the budget (inf, tied at the top of the ranks); a failed run is unsolved too,
    as the detail says, and failures get a line of their own (an exact sign test over the
    seeds where one side alone failed), so a crash is never read silently as "unsolved"."""
    first, second = arms
    pairs = list(zip(first.jobs, second.jobs, strict=False))
    unsolved = sum(not j.reinforcement.episodes_to_solve for pair in pairs for j in pair)
    crashed = [j for pair in pairs for j in pair if failed(j)]
    detail = f"{unsolved} of {2 * len(pairs)} runs unsolved, censored at the budget"
    if crashed:
        detail += f" ({len(crashed)} of them failed, counted as unsolved: the worst)"
    lines = [
        Line(
            question,
            first.label,
            second.label,
            paired_iqm_ratio([figure(a) for a, _ in pairs], [figure(b) for _, b in pairs], level),
            higher_is_better=False,
            detail=detail,
        )
        for question, figure in (
            ("solves in fewer episodes (IQM of episodes to solve)", episodes_to_solve),
            ("solves sooner (IQM of minutes to solve)", minutes_to_solve),
        )
    ]
    if crashed:
        lines.append(
            Line(
                "finishes its runs (share of runs that did not fail)",
                first.label,
                second.label,
                failed_runs([failed(a) for a, _ in pairs], [failed(b) for _, b in pairs], level),
                higher_is_better=True,
                detail="; ".join(
                    f"{j.spec.framework} seed {j.spec.seed}: {j.error}" for j in crashed
                ),
            )
        )
    return lines


def _interval(values: list, fmt: str) -> str:
    point, low, high = (v if v is not None else math.inf for v in values)
    show = lambda x: "unsolved" if not math.isfinite(x) else format(x, fmt)  # noqa: E731
    return f"{show(point)} [{show(low)}, {show(high)}]"


def summary_rows(results: dict) -> list[list[str]]:
    level = results["design"]["level"]
    rows = []
    for label, arm in results["arms"].items():
        s = arm["summary"]
        rows.append(
            [
                LABELS.get(arm["framework"], label),
                f"solved {_interval(s['solve_rate'], '.0%')}",
                f"IQM episodes to solve {_interval(s['iqm_episodes_to_solve'], '.0f')}",
                f"IQM minutes to solve {_interval(s['iqm_minutes_to_solve'], '.1f')}",
                f"env steps/s {_interval(s['steps_per_second'], ',.0f')}",
                f"({level:.0%} bootstrap intervals over {s['seeds']} seeds)",
            ]
        )
    return rows


def tables(results: dict) -> list[tuple[str, list[str], list[list[str]]]]:
    design = results["design"]
    level = f"{design['level']:.0%}"
    headers = ["framework", "seeds", "solved", f"{level} interval", "IQM episodes to solve",
               f"{level} interval", "IQM minutes to solve", f"{level} interval",
               "env steps/s", "time in the network"]  # fmt: skip
    rows = []
    for label, arm in results["arms"].items():
        s = arm["summary"]
        rate, middle, minutes = (
            s["solve_rate"],
            s["iqm_episodes_to_solve"],
            s["iqm_minutes_to_solve"],
        )
        show = lambda x, fmt=".0f": "unsolved" if x is None else format(x, fmt)  # noqa: E731
        rows.append(
            [
                LABELS.get(arm["framework"], label),
                str(s["seeds"]),
                f"{rate[0]:.0%}",
                f"{rate[1]:.0%} to {rate[2]:.0%}",
                show(middle[0]),
                f"{show(middle[1])} to {show(middle[2])}",
                show(minutes[0], ".1f"),
                f"{show(minutes[1], '.1f')} to {show(minutes[2], '.1f')}",
                f"{s['steps_per_second'][0]:,.0f}",
                f"{s['network_share']:.0%}",
            ]
        )
    verdict = [
        [v["question"], f"{v['first']} / {v['second']}",
         "-" if not math.isfinite(v["ratio"]) else f"{v['ratio']:.3f}",
         "-" if v["interval"][1] is None else f"{v['interval'][0]:.3f} to {v['interval'][1]:.3f}",
         v["outcome"], v["winner"] or "-", "; ".join(x for x in (v["detail"], v["method"]) if x)]
        for v in results["verdict"]
    ]  # fmt: skip
    runs = [
        [LABELS.get(arm["framework"], label), str(r["seed"]), r["state"],
         str(len(r["episode_rewards"])), str(r["episodes_to_solve"] or "-"),
         str(r["steps_to_solve"] or "-"),
         "-" if r["seconds_to_solve"] is None else f"{r['seconds_to_solve'] / 60:.1f}",
         str(r["evaluations"]), f"{r['steps_per_second']:,.0f}", f"{r['network_seconds']:.0f} / {r['environment_seconds']:.0f}"]
        for label, arm in results["arms"].items()
        for r in arm["runs"]
    ]  # fmt: skip
    tables_ = [
        (
            f"Results ({design['hardware']}; budget {design['env_steps_budget']:,} environment"
            " steps per run; solved: the greedy policy's mean reward over 100 evaluation"
            " episodes >= 475)",
            headers,
            rows,
        ),
        (
            f"Verdict ({level}; paired by seed; {family_note(results['verdict'])})",
            ["question", "first / second", "ratio", "interval", "outcome", "winner", "method"],
            verdict,
        ),
        (
            "Runs",
            [
                "framework",
                "seed",
                "state",
                "episodes",
                "episodes to solve",
                "steps to solve",
                "minutes to solve",
                "greedy evaluations",
                "env steps/s",
                "network s / environment s",
            ],  # fmt: skip
            runs,
        ),
        (
            "How it was run",
            ["", ""],
            [
                ["order", " ".join(design["order"])],
                *[[f"seeds, {k}", ", ".join(map(str, v))] for k, v in design["seeds"].items()],
                *[[k, str(v)] for k, v in results["environment"].items()],
                ["command", results["command"]],
            ],
        ),
    ]
    return tables_ + code_tables(results)


def reward_curves(results: dict) -> bytes:
    """Each seed's reward per training episode (a 20-episode moving mean), both frameworks on
    one axis; a dot where a run was solved (it stops there)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 4.2))
    for label, arm in results["arms"].items():
        color = COLORS.get(arm["framework"], "#333")
        for i, run in enumerate(arm["runs"]):
            rewards = np.asarray(run["episode_rewards"], float)
            if not len(rewards):
                continue
            window = min(20, len(rewards))
            smooth = np.convolve(rewards, np.ones(window) / window, mode="valid")
            name = LABELS.get(arm["framework"], label) if i == 0 else None
            ax.plot(np.arange(window, len(rewards) + 1), smooth, color=color, alpha=0.45,
                    linewidth=1, label=name)  # fmt: skip
            if run["episodes_to_solve"]:  # where the greedy policy passed its evaluation
                at = min(max(run["episodes_to_solve"] - window, 0), len(smooth) - 1)
                ax.plot(at + window, smooth[at], "o", color=color, markersize=4)
    ax.axhline(
        475,
        color="#555",
        linestyle="--",
        linewidth=1,
        label="threshold (475, of the greedy policy)",
    )
    ax.set_xlabel("episode")
    ax.set_ylabel("reward, 20-episode moving mean")
    ax.set_title("Reward per training episode, one line per seed; a dot: solved")
    ax.legend()
    return png(fig)


def write_rl_report(directory: Path, results: dict) -> None:
    png = reward_curves(results)
    images = {"rewards.png": ("Reward curves", png)}
    title = f"DQN on CartPole-v1, {' vs '.join(results['arms'])}"
    write_files(
        directory,
        {
            "rewards.png": png,
            "results.json": json.dumps(results, indent=2).encode(),
            "report.md": (
                render_markdown(title, made(results), tables(results), images)
                + code_markdown(results)
            ).encode(),
            "report.html": render_html(title, made(results), tables(results), images)
            .replace("</body></html>", code_html(results) + "</body></html>")
            .encode(),
        },
    )
