"""`twinbench sweep`: Optuna searches over both frameworks, each trial a training job on the services.

A sweep answers two questions apart, because one set of trials cannot answer both:
- how good each framework gets when tuned: one seeded TPE study per framework (`<name>/torch`,
  `<name>/tf`), each trial pruned from the per-epoch validation loss of its job's event stream;
- which does better at the same settings: a fixed, non-adaptive set of points (a scrambled Sobol
  sequence, seeded) trained in both frameworks, one trial per point holding both losses
  (`<name>/paired`). Points that TPE chose for one framework would be a biased sample here, and
  pruning one side of a pair would bias it too, so paired trials are never pruned.
Then each framework's best settings are trained in both frameworks, with repeats (the
cross-check), and every comparison goes through `twinbench.experiments.verdicts` like compare's.

The studies live in Optuna's storage (a journal file under TWINBENCH_HOME by default, or a
database URL shared by sweeps on several machines). A trial whose job failed (a trainer killed)
or whose sweep process died is marked failed and its settings are tried again; only completed
and pruned trials count towards `--trials`. A running trial carries its owner (host, pid) and a
heartbeat: a trial whose owner on this host is gone, or whose heartbeat is older than the grace
period, is an orphan.
"""

from __future__ import annotations

import contextlib
import math
import os
import socket
import sys
import threading
import time
from collections.abc import Callable

import grpc
import optuna
from optuna.trial import FrozenTrial, TrialState

from twinbench.api import trainer_pb2 as tpb
from twinbench.client.stack import services
from twinbench.config import Settings
from twinbench.experiments.compare_lines import describe_hardware
from twinbench.experiments.sweep_report import (
    build_sweep_results,
    print_sweep_summary,
    write_sweep_report,
)
from twinbench.experiments.sweep_studies import (
    FINISHED,
    PAIRED,
    TRAINER_WAIT_S,
    SweepOptions,
    best_per_framework,
    format_params,
    job_spec,
    open_storage,
    open_studies,
    paired_point,
    public_url,
    search_space,
    storage_url,
    suggest,
    verdict,
)
from twinbench.jobs.request import TERMINAL, state_name
from twinbench.models.spec import Range
from twinbench.rpc.channel import Client

# --- trials ---


def _owner() -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid()}


def retry_settings(trial: FrozenTrial) -> dict:
    """The settings a failed trial's retry is queued with: those it drew, and those it was
    queued with itself but had not drawn yet when it was killed (a retry of a retry), so a
    chain of retries keeps every setting of the first try."""
    return {**trial.system_attrs.get("fixed_params", {}), **trial.params}


def _orphaned(trial: FrozenTrial, grace_s: float) -> str | None:
    """Why a RUNNING trial has no live owner, or None while it has one."""
    owner = trial.user_attrs.get("owner")
    if owner and owner["host"] == socket.gethostname():
        if owner["pid"] == os.getpid():
            return None
        try:
            os.kill(owner["pid"], 0)
            return None
        except ProcessLookupError:
            return f"orphaned: its sweep process ({owner['pid']}) is gone"
        except PermissionError:
            return None  # alive, another user's
    beat = trial.user_attrs.get("heartbeat")
    if beat is None and trial.datetime_start is not None:
        beat = trial.datetime_start.timestamp()
    if beat is not None and time.time() - beat > grace_s:
        return f"orphaned: no heartbeat for {time.time() - beat:.0f} s"
    return None


class Sweep:
    """Runs the trials of one sweep's studies on the services behind one gateway."""

    def __init__(
        self,
        client: Client,
        studies: dict[str, optuna.Study],
        options: SweepOptions,
        space: dict[str, Range],
        out: Callable[[str], None] = print,
    ) -> None:
        self.client = client
        self.studies = studies
        self.options = options
        self.space = space
        self.stop = threading.Event()
        self.grace_s = 6 * options.heartbeat_s
        self._out = out
        self._print_lock = threading.Lock()
        self._in_flight: dict[int, optuna.Study] = {}  # trial id -> its study, for the heartbeat
        self._jobs: set[str] = set()  # this process's unfinished jobs, cancelled on Ctrl-C
        self._lock = threading.Lock()
        self.devices: set[str] = set()

    def say(self, text: str) -> None:
        with self._print_lock:
            self._out(text)

    # --- orphans and retries ---

    def reap_orphans(self, key: str) -> None:
        """Fails the study's running trials that lost their owner and queues their retries."""
        study = self.studies[key]
        for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            reason = _orphaned(trial, self.grace_s)
            if reason is None:
                continue
            for attr, job_id in trial.user_attrs.items():
                if attr.startswith("job "):
                    self._cancel(job_id)
            with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError, RuntimeError):
                study._storage.set_trial_user_attr(trial._trial_id, "failure", reason)
                if study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL):
                    self.say(f"[{key}] trial {trial.number}: {reason}; it is tried again")
                    self._retry(key, trial)

    def _retry(self, key: str, trial: FrozenTrial) -> None:
        if key == PAIRED:
            return  # ensure_points queues every point that has no live trial
        self.studies[key].enqueue_trial(
            retry_settings(trial), user_attrs={"retry_of": trial.number}, skip_if_exists=False
        )

    def ensure_points(self) -> None:
        """Queues each paired point 0..paired-1 that has no waiting, running or finished trial."""
        study = self.studies[PAIRED]
        trials = study.get_trials(deepcopy=False)
        live = {t.user_attrs.get("point") for t in trials if t.state != TrialState.FAIL}
        failed = {t.user_attrs.get("point"): t.number for t in trials if t.state == TrialState.FAIL}
        for index in range(self.options.paired):
            if index not in live:
                attrs = {"point": index}
                if index in failed:
                    attrs["retry_of"] = failed[index]
                params = paired_point(self.space, index, self.options.seed)
                study.enqueue_trial(params, user_attrs=attrs, skip_if_exists=False)

    def heartbeat(self) -> None:
        """Marks this process's running trials alive, every heartbeat interval."""
        while not self.stop.wait(self.options.heartbeat_s):
            with self._lock:
                flying = list(self._in_flight.items())
            for trial_id, study in flying:
                with contextlib.suppress(Exception):  # finished meanwhile: nothing to mark
                    study._storage.set_trial_user_attr(trial_id, "heartbeat", time.time())

    # --- the loops ---

    def counts(self, key: str) -> tuple[int, int]:
        """(finished, running) trials of a study, this process's and every other's."""
        trials = self.studies[key].get_trials(
            deepcopy=False, states=(*FINISHED, TrialState.RUNNING)
        )
        finished = sum(t.state in FINISHED for t in trials)
        return finished, len(trials) - finished

    def run_study(self, key: str, target: int) -> None:
        """Trials of one study until `target` have finished (here or on other machines)."""
        while not self.stop.is_set():
            self.reap_orphans(key)
            if key == PAIRED:
                self.ensure_points()
            finished, running = self.counts(key)
            if finished >= target:
                return
            if finished + running >= target:  # the rest run elsewhere: wait for them
                self.stop.wait(self.options.heartbeat_s)
                continue
            trial = self.studies[key].ask()
            trial.set_user_attr("owner", _owner())
            trial.set_user_attr("heartbeat", time.time())
            with self._lock:
                self._in_flight[trial._trial_id] = self.studies[key]
            try:
                if key == PAIRED:
                    self._paired_trial(trial, target)
                else:
                    self._tuned_trial(key, trial, target)
            finally:
                with self._lock:
                    self._in_flight.pop(trial._trial_id, None)

    def _tuned_trial(self, framework: str, trial: optuna.Trial, target: int) -> None:
        study = self.studies[framework]
        params = suggest(trial, self.space)
        seed = self.options.seed + trial.number
        spec = self._spec(params, framework, seed)
        trial.set_user_attr("epochs trained", spec.epochs)
        pruned_at = 0

        def on_epoch(job_id: str, epoch: tpb.EpochMetrics) -> bool:
            nonlocal pruned_at
            if not math.isfinite(epoch.val_loss):
                return False  # a diverged run ends as such, never as pruned
            trial.report(epoch.val_loss, epoch.epoch)
            if epoch.epoch < spec.epochs and trial.should_prune():
                pruned_at = epoch.epoch
                self._cancel(job_id)
                return True
            return False

        (job,) = self._train(trial, [spec], on_epoch)
        if job is None:  # interrupted (Ctrl-C): the trial is tried again on --resume
            self._fail(framework, trial, "interrupted")
            return
        if pruned_at:
            study.tell(trial, state=TrialState.PRUNED)
            self._progress(framework, trial, f"pruned at epoch {pruned_at}", params, target)
        elif job.state == tpb.SUCCEEDED:
            value = _final_loss(job)
            if not math.isfinite(value):
                trial.set_user_attr("diverged", True)
            study.tell(trial, value)
            what = f"val loss {value:.4f} after {spec.epochs} epochs"
            self._progress(framework, trial, what, params, target)
        else:
            self._fail(framework, trial, f"job {job.id} {state_name(job.state)}: {job.error}")

    def _paired_trial(self, trial: optuna.Trial, target: int) -> None:
        study = self.studies[PAIRED]
        point = trial.user_attrs.get("point")
        if point is None:  # no point was waiting: another machine took the last one meanwhile
            trial.set_user_attr("failure", "no paired point was left to run")
            study.tell(trial, state=TrialState.FAIL)
            return
        params = suggest(trial, self.space)  # the enqueued point's
        seed = self.options.seed + point
        specs = [
            self._spec(params, f, seed) for f in self.options.frameworks
        ]  # one seed: one shared init
        trial.set_user_attr("epochs trained", specs[0].epochs)
        followed = self._train(trial, specs, lambda *_: False)
        jobs = [job for job in followed if job is not None]
        if len(jobs) < len(followed):
            self._fail(PAIRED, trial, "interrupted")
            return
        failed = [j for j in jobs if j.state != tpb.SUCCEEDED]
        if failed:
            for j in jobs:
                self._cancel(j.id)
            reason = "; ".join(f"job {j.id} {state_name(j.state)}: {j.error}" for j in failed)
            self._fail(PAIRED, trial, reason)
            return
        values = [_final_loss(j) for j in jobs]
        if not all(math.isfinite(v) for v in values):
            trial.set_user_attr("diverged", [f for f, v in zip(self.options.frameworks, values, strict=True)
                                             if not math.isfinite(v)])  # fmt: skip
        study.tell(trial, values)
        losses = ", ".join(
            f"{f} {v:.4f}" for f, v in zip(self.options.frameworks, values, strict=True)
        )
        self._progress(PAIRED, trial, f"point {point}: val loss {losses}", params, target)

    def _spec(self, params: dict, framework: str, seed: int) -> tpb.JobSpec:
        o = self.options
        return job_spec(o.model, params, framework, seed, o.epochs, o.dataset, o.train_samples)

    def _fail(self, key: str, trial: optuna.Trial, reason: str) -> None:
        with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):
            trial.set_user_attr("failure", reason)
            self.studies[key].tell(trial, state=TrialState.FAIL)
            self.say(f"[{key}] trial {trial.number} failed ({reason}); it is tried again")
            self._retry(key, self.studies[key]._storage.get_trial(trial._trial_id))

    def _progress(self, key: str, trial: optuna.Trial, what: str, params: dict, target: int):
        finished, _ = self.counts(key)
        study = self.studies[key]
        if key == PAIRED:
            best = ""
        else:
            with contextlib.suppress(ValueError):
                best = f"; best {study.best_value:.4f} (trial {study.best_trial.number})"
        self.say(f"[{key}] trial {finished} of {target} done (#{trial.number}): {what}{best}"
                 f" | {format_params(params)}")  # fmt: skip

    # --- jobs ---

    def _train(
        self,
        trial: optuna.Trial,
        specs: list[tpb.JobSpec],
        on_epoch: Callable[[str, tpb.EpochMetrics], bool],
    ) -> list[tpb.Job | None]:
        """Starts one job per spec at once and follows each to its end (None: interrupted)."""
        jobs: list[tpb.Job] = []
        for spec in specs:
            job = self._create(spec)
            if job is None:
                for j in jobs:
                    self._cancel(j.id)
                return [None] * len(specs)
            trial.set_user_attr(f"job {spec.framework}", job.id)
            jobs.append(job)
        results: list[tpb.Job | None] = [None] * len(jobs)

        def follow(i: int) -> None:
            results[i] = self._follow(jobs[i].id, on_epoch)

        threads = [
            threading.Thread(target=follow, args=(i,), daemon=True) for i in range(len(jobs))
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return results

    def _create(self, spec: tpb.JobSpec) -> tpb.Job | None:
        """CreateJob, waiting out a trainer that is away (killed, restarting)."""
        deadline = time.monotonic() + TRAINER_WAIT_S
        while not self.stop.is_set():
            try:
                (job,) = self.client.trainer.CreateJob(
                    tpb.CreateJobRequest(spec=spec), timeout=30
                ).jobs
                with self._lock:
                    self._jobs.add(job.id)
                return job
            except grpc.RpcError as exc:
                retriable = exc.code() in (grpc.StatusCode.UNAVAILABLE,
                                           grpc.StatusCode.RESOURCE_EXHAUSTED)  # fmt: skip
                if not retriable or time.monotonic() > deadline:
                    raise
                self.stop.wait(1.0)
        return None

    def _follow(
        self, job_id: str, on_epoch: Callable[[str, tpb.EpochMetrics], bool]
    ) -> tpb.Job | None:
        """The job's event stream to its end; through a trainer's restart, its record."""
        deadline = time.monotonic() + TRAINER_WAIT_S
        seen = 0
        while not self.stop.is_set():
            try:
                for event in self.client.trainer.WatchJob(tpb.WatchJobRequest(job_id=job_id)):
                    if event.WhichOneof("event") == "epoch" and event.epoch.epoch > seen:
                        seen = event.epoch.epoch
                        on_epoch(job_id, event.epoch)
                job = self.client.trainer.GetJob(tpb.GetJobRequest(job_id=job_id), timeout=30)
                if job.state in TERMINAL:
                    return self._ended(job)
            except grpc.RpcError as exc:
                # The trainer is away (killed, restarting) or too busy to answer in time: its
                # record, once it answers, tells how the job ended.
                away = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
                if exc.code() not in away or time.monotonic() > deadline:
                    raise
                self.stop.wait(1.0)
        return None

    def _ended(self, job: tpb.Job) -> tpb.Job:
        with self._lock:
            self._jobs.discard(job.id)
            if job.device:
                self.devices.add(job.device)
        return job

    def _cancel(self, job_id: str) -> None:
        with contextlib.suppress(grpc.RpcError):  # gone or finished: nothing to cancel
            self.client.trainer.CancelJob(tpb.CancelJobRequest(job_id=job_id), timeout=10)

    def cancel_all(self) -> None:
        with self._lock:
            jobs = list(self._jobs)
        for job_id in jobs:
            self._cancel(job_id)

    # --- the cross-check ---

    def cross_check(self, best: dict[str, dict]) -> list[dict]:
        """Each framework's best settings trained in both, `cross_repeats` times, both at once."""
        out: list[dict] = []
        for source, found in best.items():
            repeats: list[dict] = []
            entry = {"settings_of": source, "params": found["params"], "repeats": repeats}
            for r in range(self.options.cross_repeats):
                seed = self.options.seed + 10_000 + r  # apart from every trial's seed
                specs = [self._spec(found["params"], f, seed) for f in self.options.frameworks]
                created = [self._create(s) for s in specs]
                jobs = [j for j in created if j is not None]
                if len(jobs) < len(created):
                    return out
                followed = [self._follow(j.id, lambda *_: False) for j in jobs]
                done = [j for j in followed if j is not None]
                if len(done) < len(followed):
                    return out
                losses = {j.spec.framework: _final_loss(j) if j.state == tpb.SUCCEEDED else None
                          for j in done}  # fmt: skip
                repeats.append({"seed": seed, "val_loss": losses,
                                         "jobs": {j.spec.framework: j.id for j in done}})  # fmt: skip
                self.say(
                    f"[cross-check] {source}'s best, repeat {r + 1}/{self.options.cross_repeats}:"
                    + "".join(
                        f" {f} {v:.4f}" if v is not None else f" {f} failed"
                        for f, v in losses.items()
                    )
                )
            out.append(entry)
        return out


def _final_loss(job: tpb.Job) -> float:
    """The objective: the validation loss after the last epoch (inf for a run that diverged)."""
    value = job.epochs[-1].val_loss if job.epochs else math.nan
    return value if math.isfinite(value) else math.inf


# --- the whole sweep ---


def run_sweep(settings: Settings, gateway: str, options: SweepOptions) -> int:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = search_space(options.model, options.epochs)
    url = storage_url(settings, options.storage)
    storage = open_storage(settings, options.storage)
    studies = open_studies(storage, options)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    report_dir = options.reports.resolve() / f"{stamp}-sweep-{options.name.replace('/', '_')}"
    started = time.monotonic()
    print(
        f"sweep {options.name}: {options.model}, {options.trials} trials per framework,"
        f" {options.paired} paired points; studies in {public_url(url)}"
    )
    with services(settings, gateway, options.frameworks) as (address, _):
        client = Client(address, settings)
        sweep = Sweep(client, studies, options, space)
        beat = threading.Thread(target=sweep.heartbeat, name="sweep-heartbeat", daemon=True)
        beat.start()
        try:
            _run_phase(
                sweep, [(f, options.trials) for f in options.frameworks]
            )  # both trainers at once
            _run_phase(sweep, [(PAIRED, options.paired)])
            best = best_per_framework(studies)
            cross = sweep.cross_check(best) if options.cross_repeats else []
        except KeyboardInterrupt:
            sweep.stop.set()
            sweep.cancel_all()
            print(
                "\ninterrupted: the studies are kept; continue with the same command and --resume",
                file=sys.stderr,
            )
            return 130
        finally:
            sweep.stop.set()
            client.close()
    results = build_sweep_results(
        studies, options, space, public_url(url), cross,
        verdict(studies, cross, describe_hardware(sweep.devices), options.level),
        time.monotonic() - started,
    )  # fmt: skip
    write_sweep_report(report_dir, results)
    print_sweep_summary(results)
    print(f"report: {report_dir / 'report.html'}")
    return 0


def _run_phase(sweep: Sweep, work: list[tuple[str, int]]) -> None:
    """Runs the studies' loops in threads, one per study, until each has its trials."""
    errors: list[BaseException] = []

    def loop(key: str, target: int) -> None:
        try:
            sweep.run_study(key, target)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the main thread
            errors.append(exc)
            sweep.stop.set()

    threads = [threading.Thread(target=loop, args=w, daemon=True) for w in work]
    for t in threads:
        t.start()
    for t in threads:
        while t.is_alive():  # joined in slices, so Ctrl-C reaches the main thread
            t.join(0.5)
    if errors:
        raise errors[0]
    if sweep.stop.is_set():
        raise KeyboardInterrupt
