"""`twinbench bench serving --scenario tune`: each export's dynamic batching tuned under a p99
target, as Triton's Model Analyzer tunes a model's: a grid of the gateway's batching settings
(the most requests merged into one frame x how long a frame waits for company), each setting
scored per export by the highest Poisson rate whose p99 stays under the target through the
gateway (path d), the best written to that export's config.pbtxt.

Every export gets the same budget: under each setting, the same number of rate steps of the same
length, from the same starting rate (doubling while a step passes, then bisecting in ratio
between the last pass and the first failure), so no export is searched harder than another. A
step is server_scenario's open loop and passes as its does (p99 at most the target, none over
the bound, none failed). Settings go in the grid's order and, under each, the exports one after
the other, so a slow minute weighs on one setting of every export rather than on one export.
The best setting is the highest rate; on a tie, the shorter delay, then the fewer rows (less
waiting for the same rate).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Callable, Iterable
from pathlib import Path

from twinbench.client.stack import LocalStack
from twinbench.experiments.server_scenario import Step, open_loop_step
from twinbench.serving.repository import write_dynamic_batching

MAX_ROWS = (1, 4, 8, 16)
DELAYS_US = (0, 500, 2000)
STEPS = 6  # rate steps per export and setting
START_RATE = 400.0


@dataclasses.dataclass(frozen=True)
class Setting:
    max_rows: int  # the most requests the gateway merges into one frame
    delay_us: int  # how long a frame waits for company

    def __str__(self) -> str:
        return f"max {self.max_rows} rows, {self.delay_us / 1000:g} ms delay"


def grid(max_rows: Iterable[int] = MAX_ROWS, delays_us: Iterable[int] = DELAYS_US) -> list[Setting]:
    return [Setting(r, d) for r, d in itertools.product(max_rows, delays_us)]


def budgeted_search(
    measure: Callable[[float], Step], steps: int = STEPS, start_rate: float = START_RATE
) -> tuple[float, list[Step]]:
    """The highest passing rate found in exactly `steps` steps: doubling from `start_rate` while
    they pass (halving while they fail, when the first does), then bisecting in ratio between
    the last pass and the first failure. 0.0: none passed."""
    low, high = 0.0, math.inf
    taken: list[Step] = []
    rate = start_rate
    for _ in range(steps):
        taken.append(measure(rate))
        if taken[-1].passed:
            low = rate
        else:
            high = rate
        if math.isinf(high):
            rate = low * 2
        elif low == 0.0:
            rate = high / 2
        else:
            rate = math.sqrt(low * high)
    return low, taken


def best_setting(scores: dict[Setting, float]) -> Setting:
    """The setting with the highest rate; on a tie the shorter delay, then the fewer rows."""
    return min(scores, key=lambda s: (-scores[s], s.delay_us, s.max_rows))


def tune(
    score: Callable[[Setting, str], tuple[float, list[Step]]],
    models: list[str],
    settings: list[Setting],
    apply: Callable[[Setting], None] = lambda s: None,
    report: Callable[[Setting, str, float], None] = lambda s, m, r: None,
) -> dict[str, dict]:
    """Each setting applied once (`apply`), then every model scored under it (`score`: the
    highest passing rate and its steps); per model, every setting's score and the best."""
    scores: dict[str, dict[Setting, float]] = {m: {} for m in models}
    steps: dict[str, list[dict]] = {m: [] for m in models}
    for setting in settings:
        apply(setting)
        for model in models:
            rate, taken = score(setting, model)
            scores[model][setting] = rate
            steps[model] += [
                {**dataclasses.asdict(setting), **dataclasses.asdict(t)} for t in taken
            ]
            report(setting, model, rate)
    out = {}
    for model in models:
        best = best_setting(scores[model])
        out[model] = {
            "best": dataclasses.asdict(best),
            "max_rate": scores[model][best],
            "scores": [{**dataclasses.asdict(s), "max_rate": r} for s, r in scores[model].items()],
            "steps": steps[model],
        }
    return out


def run_batching_tune(
    stack: LocalStack,
    requests: dict[str, bytes],
    p99_target_ms: float,
    settings: list[Setting],
    steps: int = STEPS,
    step_s: float = 1.0,
    cpus: set[int] | None = None,
    report: Callable[[Setting, str, float], None] = lambda s, m, r: None,
) -> dict[str, dict]:
    """The grid on the stack's gateway (restarted with each setting, dynamic batching on), each
    served model (name -> a serialized request) given `steps` open-loop steps of `step_s`
    seconds under each. The gateway's environment is left as it was."""
    from twinbench.experiments.bench_serving import stack_pids

    keys = ("TWINBENCH_DYNAMIC_BATCHING", "TWINBENCH_BATCH_MAX_ROWS", "TWINBENCH_BATCH_DELAY_US")
    before = {k: stack.extra_env.get(k) for k in keys}
    seeds = itertools.count(1)
    # A step of step_s seconds whatever its rate: min_requests is what step_s holds at this rate.
    min_requests = lambda rate: max(1, round(rate * step_s))  # noqa: E731

    def apply(setting: Setting) -> None:
        stack.extra_env.update({keys[0]: "on", keys[1]: str(setting.max_rows),
                                keys[2]: str(setting.delay_us)})  # fmt: skip
        stack.restart("gateway")

    def score(setting: Setting, model: str) -> tuple[float, list[Step]]:
        pids = stack_pids(stack)

        def measure(rate: float) -> Step:
            return open_loop_step(stack.gateway_address, requests[model], rate, p99_target_ms,
                                  min_requests(rate), cpus, pids, next(seeds))  # fmt: skip

        return budgeted_search(measure, steps)

    try:
        return tune(score, list(requests), settings, apply, report)
    finally:
        for key, value in before.items():
            if value is None:
                stack.extra_env.pop(key, None)
            else:
                stack.extra_env[key] = value
        stack.restart("gateway")


def write_best(repositories: Iterable[Path], tuned: dict[str, dict]) -> list[Path]:
    """Each model's best setting written to its config.pbtxt in each repository."""
    written = []
    for root in repositories:
        for model, result in tuned.items():
            best = result["best"]
            written.append(
                write_dynamic_batching(root / model, model, best["max_rows"], best["delay_us"])
            )
    return written


def batch_models_setting(repository: Path, names: Iterable[str]) -> tuple[str, dict[str, dict]]:
    """TWINBENCH_BATCH_MODELS for the models of `names` whose config.pbtxt holds a tuned setting
    ("name=rows:delay_us,..."), and those settings by name."""
    from twinbench.serving.repository import read_dynamic_batching

    found = {}
    for name in dict.fromkeys(names):
        tuned = read_dynamic_batching(repository / name)
        if tuned is not None:
            found[name] = {"max_rows": tuned[0], "delay_us": tuned[1]}
    text = ",".join(f"{n}={s['max_rows']}:{s['delay_us']}" for n, s in found.items())
    return text, found
