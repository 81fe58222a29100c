"""A sweep's studies: where they are stored, the search space, and the comparisons their trials
give (each through `twinbench.experiments.verdicts`, like compare's). How a sweep runs its trials is
`twinbench.experiments.sweep`.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import optuna
from optuna.storages.journal import JournalFileBackend
from optuna.trial import FrozenTrial, TrialState

from twinbench.api import trainer_pb2 as tpb
from twinbench.config import BOTH, Settings
from twinbench.errors import InvalidArgument
from twinbench.experiments.verdicts import Line, decide, paired_with_failures
from twinbench.models.catalogue import get_model_spec
from twinbench.models.spec import FloatRange, IntRange, Range

PAIRED = "paired"


FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


# Pruning: a trial stops when its validation loss at an epoch is worse than the median of the
# earlier trials at that epoch, once this many trials have finished (fewer give a poor median).
PRUNE_AFTER = 5


TRAINER_WAIT_S = 600.0  # how long a trial waits for a trainer that went away to come back


@dataclass
class SweepOptions:
    name: str  # the studies are <name>/torch, <name>/tf and <name>/paired (for torch,tf)
    model: str
    trials: int  # finished trials per framework's TPE study
    paired: int  # points trained in both frameworks
    epochs: int | None  # caps each trial's epochs (the search space's epochs go up to 200)
    cross_repeats: int  # repeats of each best configuration in both frameworks; 0 skips
    seed: int
    storage: str | None  # a database URL or a journal file; None: the journal under TWINBENCH_HOME
    resume: bool
    reports: Path
    command: str
    dataset: str = ""
    train_samples: int | None = None
    heartbeat_s: float = 10.0
    prune_after: int = PRUNE_AFTER  # finished trials of a study before its pruning starts
    level: float = 0.95
    # The two frameworks tuned and compared, first over second in every ratio.
    frameworks: tuple[str, str] = BOTH


class SweepError(InvalidArgument):
    """A sweep that cannot start as asked; the message says what to do."""


def storage_url(settings: Settings, storage: str | None) -> str:
    """What `storage` names, as one string for the report: a database URL or a journal path."""
    if storage and "://" in storage:
        return storage
    return str(Path(storage).resolve() if storage else settings.home / "sweeps" / "journal.log")


def open_storage(settings: Settings, storage: str | None) -> optuna.storages.BaseStorage:
    """A database URL (sqlite:///, postgresql://...) or Optuna's journal file, which takes
    concurrent writers (a file lock), as the default under TWINBENCH_HOME."""
    url = storage_url(settings, storage)
    if "://" in url:
        return optuna.storages.RDBStorage(url)
    Path(url).parent.mkdir(parents=True, exist_ok=True)
    return optuna.storages.JournalStorage(JournalFileBackend(url))


def public_url(url: str) -> str:
    """The storage URL without a password, for reports and the terminal."""
    if "://" not in url or "@" not in url:
        return url
    scheme, rest = url.split("://", 1)
    credentials, host = rest.rsplit("@", 1)
    return f"{scheme}://{credentials.split(':', 1)[0]}:***@{host}"


def study_names(name: str, frameworks: tuple[str, str] = BOTH) -> dict[str, str]:
    """Each framework's study and the paired one; a pair other than torch,tf names its paired
    study after it, so that one sweep name can hold several pairs."""
    paired = PAIRED if tuple(frameworks) == BOTH else f"{PAIRED}-{'-'.join(frameworks)}"
    return {**{f: f"{name}/{f}" for f in frameworks}, PAIRED: f"{name}/{paired}"}


def compared(studies: dict[str, optuna.Study]) -> tuple[str, str]:
    """The two frameworks of a sweep's studies, in their order."""
    first, second = (key for key in studies if key != PAIRED)
    return first, second


def open_studies(
    storage: optuna.storages.BaseStorage, options: SweepOptions
) -> dict[str, optuna.Study]:
    names = study_names(options.name, options.frameworks)
    existing = {s.study_name for s in optuna.get_all_study_summaries(storage)}
    there = sorted(n for n in names.values() if n in existing)
    if there and not options.resume:
        raise SweepError(
            f"sweep {options.name!r} already has studies ({', '.join(there)}); continue it with"
            " --resume, or name a new one with --name"
        )
    if options.resume and not there:
        raise SweepError(f"no sweep {options.name!r} to resume in this storage")
    studies = {}
    for key, study_name in names.items():
        if key == PAIRED:
            study = optuna.create_study(
                storage=storage, study_name=study_name, load_if_exists=True,
                directions=["minimize", "minimize"],
                sampler=optuna.samplers.RandomSampler(seed=options.seed),
            )  # fmt: skip
            with warnings.catch_warnings():  # experimental in Optuna, and harmless here
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                study.set_metric_names([f"{f} validation loss" for f in options.frameworks])
        else:
            study = optuna.create_study(
                storage=storage, study_name=study_name, load_if_exists=True,
                direction="minimize",
                sampler=optuna.samplers.TPESampler(seed=options.seed),
                pruner=optuna.pruners.MedianPruner(n_startup_trials=options.prune_after),
            )  # fmt: skip
        attrs = {"model": options.model, "epochs cap": options.epochs, "seed": options.seed}
        known = study.user_attrs
        if known and known.get("model") != options.model:
            raise SweepError(
                f"study {study_name!r} tunes {known.get('model')!r}, not {options.model!r}"
            )
        for key_, value in attrs.items():
            if key_ not in known:
                study.set_user_attr(key_, value)
        studies[key] = study
    return studies


def search_space(model: str, epochs_cap: int | None = None) -> dict[str, Range]:
    """The model's declared space; an epochs cap narrows its epochs, or removes them when the
    cap is at or below their lowest value (a parameter that changes nothing would only add
    noise to the search and to the parameters' importances)."""
    space = dict(get_model_spec(model).search_space or {})
    if not space:
        raise SweepError(f"model {model!r} declares no search space; `mlp` does")
    epochs = space.get("epochs")
    if epochs_cap and isinstance(epochs, IntRange):
        if epochs_cap <= epochs.low:
            del space["epochs"]
        else:
            space["epochs"] = IntRange(epochs.low, min(epochs.high, epochs_cap))
    return space


def suggest(trial: optuna.Trial, space: dict[str, Range]) -> dict:
    for name, r in space.items():
        if isinstance(r, FloatRange):
            trial.suggest_float(name, r.low, r.high, log=r.log)
        elif isinstance(r, IntRange):
            trial.suggest_int(name, r.low, r.high)
        else:
            trial.suggest_categorical(name, list(r.values))
    return dict(trial.params)


def paired_point(space: dict[str, Range], index: int, seed: int) -> dict:
    """Point `index` of a scrambled Sobol sequence over the space: fixed by the seed, so every
    machine and every resume trains the same points."""
    from scipy.stats import qmc

    with warnings.catch_warnings():  # a count that is not a power of two is fine here
        warnings.simplefilter("ignore")
        u = qmc.Sobol(d=len(space), scramble=True, seed=seed).random(index + 1)[index]
    point = {}
    for (name, r), x in zip(space.items(), u, strict=True):
        if isinstance(r, FloatRange) and r.log:
            point[name] = float(math.exp(math.log(r.low) + x * math.log(r.high / r.low)))
        elif isinstance(r, FloatRange):
            point[name] = float(r.low + x * (r.high - r.low))
        elif isinstance(r, IntRange):
            point[name] = min(r.high, r.low + int(x * (r.high - r.low + 1)))
        else:
            point[name] = r.values[min(len(r.values) - 1, int(x * len(r.values)))]
    return point


def job_spec(
    model: str,
    params: dict,
    framework: str,
    seed: int,
    epochs_cap: int | None = None,
    dataset: str = "",
    train_samples: int | None = None,
) -> tpb.JobSpec:
    """A job that trains `params`: the spec's own fields, and `units_<i>` as hidden units."""
    spec = tpb.JobSpec(framework=framework, model=model, dataset=dataset, seed=seed)
    spec.skip_export = True  # a trial's model is judged by its loss, never served
    apply_params(spec, params, epochs_cap)
    if train_samples is not None:
        spec.train_samples = train_samples
    return spec


def apply_params(spec: tpb.JobSpec, params: dict, epochs_cap: int | None = None) -> None:
    """Sets a study's parameters on a job spec (also `compare --params best-of:STUDY`)."""
    if "epochs" in params:
        spec.epochs = min(params["epochs"], epochs_cap) if epochs_cap else params["epochs"]
    elif epochs_cap:
        spec.epochs = epochs_cap
    if "batch_size" in params:
        spec.batch_size = int(params["batch_size"])
    if "learning_rate" in params:
        spec.optimizer.learning_rate = float(params["learning_rate"])
    if "momentum" in params:
        spec.optimizer.momentum = float(params["momentum"])
    units = sorted((int(k.split("_", 1)[1]), int(v)) for k, v in params.items()
                   if k.startswith("units_"))  # fmt: skip
    if units:
        spec.hidden_units[:] = [u for _, u in units]


def best_of(settings: Settings, storage: str | None, study_name: str) -> tuple[dict, int]:
    """A framework study's best parameters and the epochs its best trial trained."""
    store = open_storage(settings, storage)
    try:
        study = optuna.load_study(study_name=study_name, storage=store)
    except KeyError:
        names = sorted(s.study_name for s in optuna.get_all_study_summaries(store))
        raise SweepError(
            f"no study {study_name!r} in {public_url(storage_url(settings, storage))}; it has:"
            f" {', '.join(names) or 'none'}"
        ) from None
    if len(study.directions) != 1:
        raise SweepError(f"{study_name!r} compares frameworks; name a tuned one, e.g. <sweep>/tf")
    try:
        best = study.best_trial
    except ValueError:
        raise SweepError(f"study {study_name!r} has no completed trial yet") from None
    epochs = best.user_attrs.get("epochs trained") or best.params.get("epochs")
    if epochs is None:
        raise SweepError(f"study {study_name!r}: its best trial records no epochs")
    return dict(best.params), int(epochs)


def format_params(params: dict) -> str:
    parts = []
    units = [str(params[k]) for k in sorted(params) if k.startswith("units_")]
    for key, label in (("learning_rate", "lr"), ("momentum", "momentum")):
        if key in params:
            parts.append(f"{label} {params[key]:.3g}")
    if "batch_size" in params:
        parts.append(f"batch {params['batch_size']}")
    if "epochs" in params:
        parts.append(f"epochs {params['epochs']}")
    if units:
        parts.append(f"units {'-'.join(units)}")
    return ", ".join(parts)


def best_per_framework(studies: dict[str, optuna.Study]) -> dict[str, dict]:
    best = {}
    for framework in compared(studies):
        with contextlib.suppress(ValueError):  # no completed trial
            trial = studies[framework].best_trial
            best[framework] = {"params": dict(trial.params), "value": trial.value,
                               "trial": trial.number,
                               "epochs_trained": trial.user_attrs.get("epochs trained")}  # fmt: skip
    return best


def paired_values(study: optuna.Study) -> list[FrozenTrial]:
    """The completed paired trials, one per point (the first to complete, should a retry race)."""
    by_point: dict[int, FrozenTrial] = {}
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        by_point.setdefault(t.user_attrs["point"], t)
    return [by_point[k] for k in sorted(by_point)]


def verdict(
    studies: dict[str, optuna.Study], cross: list[dict], hardware: str, level: float
) -> list[dict]:
    """The sweep's comparisons, each a ratio first/second (torch/tf) of validation loss with its
    interval, all corrected together (Holm): lower is better."""
    first, second = compared(studies)
    lines = []
    # Every point and repeat counts: where a side diverged or failed, it is the worst there,
    # and an exact sign test then orders every pair (none is left out).
    pairs = [[_loss(v) for v in t.values] for t in paired_values(studies[PAIRED])]
    if pairs:
        worst = sum(math.isinf(v) for pair in pairs for v in pair)
        lines.append(
            Line(
                "lower validation loss at the same settings (paired points)",
                first, second,
                paired_with_failures([a for a, _ in pairs], [b for _, b in pairs], level=level),
                higher_is_better=False,
                detail=f"{len(pairs)} points; {worst} diverged runs counted as the worst",
            )
        )  # fmt: skip
    for entry in cross:
        done = [(_loss(r["val_loss"].get(first)), _loss(r["val_loss"].get(second)))
                for r in entry["repeats"]]  # fmt: skip
        if done:
            worst = sum(math.isinf(v) for pair in done for v in pair)
            lines.append(
                Line(
                    f"lower validation loss with {entry['settings_of']}'s best settings",
                    first, second,
                    paired_with_failures([a for a, _ in done], [b for _, b in done], level=level),
                    higher_is_better=False,
                    detail=f"{len(done)} repeat(s), a new seed each, the same for both"
                    + (f"; {worst} failed or diverged runs counted as the worst" if worst else ""),
                )
            )  # fmt: skip
    return decide(lines, hardware, level) if lines else []


def _loss(value: float | None) -> float:
    """A validation loss for a verdict: a run that diverged or failed (no finite loss) is inf,
    the worst."""
    if value is None or not math.isfinite(value):
        return math.inf
    return max(value, 1e-12)
