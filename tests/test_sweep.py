"""`twinbench sweep` end to end: real trials on the services, a real Optuna journal, crashes survived."""

import json
import os
import subprocess
import sys
from pathlib import Path

import jsonschema
import optuna
import pytest
from optuna.trial import TrialState

from tally import TALLY
from tests_support import until
from twinbench.api import trainer_pb2 as tpb
from twinbench.experiments.sweep import Sweep, retry_settings
from twinbench.experiments.sweep_report import SCHEMA_FILE
from twinbench.experiments.sweep_studies import (
    SweepOptions,
    job_spec,
    open_storage,
    open_studies,
    paired_point,
    search_space,
)
from twinbench.models.spec import IntRange
from twinbench.rpc.channel import Client

TRIALS, PAIRED = 2, 1
MLP_SPACE = search_space("mlp")


def _studies(storage: Path) -> dict[str, optuna.Study]:
    store = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(storage)))
    names = [s.study_name for s in optuna.get_all_study_summaries(store)]
    return {name.split("/")[1]: optuna.load_study(study_name=name, storage=store) for name in names}


# A generous deadline, for a busy 2-core machine; each poll reads the whole journal or asks for a
# job, so not too often. A failure shows the sweep's log.
SWEEP_WAIT_S = 600
SWEEP_POLL_S = 0.2


def _running_job(client, storage: Path, key: str) -> str | None:
    """The job of a running trial of study `key` once that job is training, else None."""
    study = _studies(storage).get(key)
    for trial in study.get_trials(states=(TrialState.RUNNING,)) if study else []:
        for attr, job_id in trial.user_attrs.items():
            if attr.startswith("job "):
                job = client.trainer.GetJob(tpb.GetJobRequest(job_id=job_id))
                if job.state == tpb.RUNNING:
                    return job_id
    return None


def test_a_sweep_survives_a_killed_trainer_and_its_own_crash_and_resumes(
    stack, settings, client, tmp_path
):
    storage = tmp_path / "journal.log"
    reports = tmp_path / "reports"
    args = [sys.executable, "-m", "twinbench.cli", "--gateway", stack.gateway_address, "sweep",
            "--model", "mlp", "--trials", str(TRIALS), "--paired", str(PAIRED), "--epochs", "2",
            "--train-samples", "256", "--cross-repeats", "0", "--storage", str(storage),
            "--reports", str(reports), "--heartbeat", "1"]  # fmt: skip
    env = {**os.environ, "TWINBENCH_HOME": str(settings.home)}
    log = tmp_path / "first.log"
    with open(log, "wb") as out:
        first = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        # A trainer killed while a trial's job trains: that trial fails and is tried again.
        until(
            lambda: _running_job(client, storage, "torch"),
            "a torch trial training",
            SWEEP_WAIT_S,
            SWEEP_POLL_S,
            log.read_text,
        )
        stack.kill("torch_trainer")
        TALLY["faults injected"] += 1
        stack.start_service("torch_trainer")
        until(
            lambda: _studies(storage)["torch"].get_trials(states=(TrialState.FAIL,)),
            "the killed trainer's trial marked failed",
            SWEEP_WAIT_S,
            SWEEP_POLL_S,
            log.read_text,
        )
        # The sweep itself killed mid-trial: its running trials are orphans.
        until(
            lambda: _running_job(client, storage, "tf"),
            "a tf trial training",
            SWEEP_WAIT_S,
            SWEEP_POLL_S,
            log.read_text,
        )
        first.kill()
        first.wait()
    finally:
        if first.poll() is None:
            first.kill()
    orphans = {k: [t.number for t in s.get_trials(states=(TrialState.RUNNING,))]
               for k, s in _studies(storage).items()}  # fmt: skip
    assert orphans["tf"], log.read_text()
    TALLY["faults injected"] += 1

    again = subprocess.run([*args, "--resume"], capture_output=True, text=True, env=env,
                           timeout=900)  # fmt: skip
    assert again.returncode == 0, log.read_text() + again.stdout + again.stderr
    assert "orphaned: its sweep process" in again.stdout
    TALLY["faults survived"] += 2

    studies = _studies(storage)
    assert set(studies) == {"torch", "tf", "paired"}
    jobs: list[str] = []
    for key in ("torch", "tf"):
        trials = studies[key].get_trials()
        finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
        assert len(finished) == TRIALS, [(t.number, t.state) for t in trials]
        assert not [t for t in trials if t.state == TrialState.RUNNING]  # none left behind
        for t in finished:
            assert t.user_attrs["epochs trained"] == 2 and t.user_attrs[f"job {key}"]
            jobs.append(t.user_attrs[f"job {key}"])
        # Every failed trial (the killed trainer's, the orphans) was tried again, settings and all.
        for failed in (t for t in trials if t.state == TrialState.FAIL):
            assert failed.user_attrs["failure"]
            # The same settings in the try that finally ran. A trial killed while its settings
            # were still being drawn (the sweep is killed while the other study's trial trains)
            # had only some of them, and its retry draws the rest; a retry killed so is itself
            # tried again, so the chain of retries is followed to its end.
            retry = failed
            while retry.state == TrialState.FAIL:
                (retry,) = [t for t in trials if t.user_attrs.get("retry_of") == retry.number]
            assert retry.state in (TrialState.COMPLETE, TrialState.PRUNED)
            assert {k: retry.params[k] for k in failed.params} == failed.params
    assert all(n in [t.number for t in studies["tf"].get_trials(states=(TrialState.FAIL,))]
               for n in orphans["tf"])  # fmt: skip
    paired = studies["paired"].get_trials(states=(TrialState.COMPLETE,))
    assert sorted(t.user_attrs["point"] for t in paired) == list(range(PAIRED))  # none twice
    for t in paired:
        assert len(t.values) == 2 and all(v > 0 for v in t.values)  # both frameworks' results
        # The sweep ran with --epochs 2, below the searched epochs: its space has none.
        assert t.params == paired_point(search_space("mlp", 2), t.user_attrs["point"], 0)
        jobs += [t.user_attrs["job torch"], t.user_attrs["job tf"]]
    assert len(jobs) == len(set(jobs))  # no job counted twice
    for job_id in jobs:
        job = client.trainer.GetJob(tpb.GetJobRequest(job_id=job_id))
        assert job.state == tpb.SUCCEEDED and len(job.epochs) == 2 and not job.exports

    (report,) = reports.iterdir()
    results = json.loads((report / "results.json").read_text())
    jsonschema.validate(results, json.loads(SCHEMA_FILE.read_text()))
    assert {p["point"] for p in results["paired"]["points"]} == set(range(PAIRED))
    for framework in ("torch", "tf"):
        best = results["tuned"][framework]["best"]
        assert best["value"] == studies[framework].best_value
    assert results["cross_check"] == []  # --cross-repeats 0
    assert results["verdict"][0]["question"].endswith("(paired points)")
    assert {"report.html", "report.md", "history.png", "paired.png"} <= {
        p.name for p in report.iterdir()
    }
    assert "best val loss" in again.stdout and f"report: {report / 'report.html'}" in again.stdout


def test_a_trial_worse_than_the_median_is_pruned_and_the_best_is_cross_checked(
    stack, settings, tmp_path
):
    """With pruning from the first finished trial: a good trial, then a hopeless one (a learning
    rate 500 times smaller, no momentum), whose loss stays near chance while the good one's
    falls. Then the best settings trained in both frameworks."""
    options = SweepOptions(
        name="prune", model="mlp", trials=2, paired=0, epochs=3, cross_repeats=1, seed=0,
        storage=str(tmp_path / "journal.log"), resume=False, reports=tmp_path,
        command="test", train_samples=512, prune_after=1,
    )  # fmt: skip
    studies = open_studies(open_storage(settings, options.storage), options)
    base = {"momentum": 0.9, "batch_size": 32, "epochs": 20, "units_1": 256, "units_2": 128,
            "units_3": 128, "units_4": 32}  # fmt: skip
    studies["torch"].enqueue_trial({**base, "learning_rate": 0.05})
    studies["torch"].enqueue_trial({**base, "learning_rate": 1e-4, "momentum": 0.0})
    lines: list[str] = []
    own = Client(stack.gateway_address, settings)
    try:
        sweep = Sweep(own, studies, options, MLP_SPACE, out=lines.append)
        sweep.run_study("torch", 2)
        good, hopeless = studies["torch"].get_trials()
        assert good.state == TrialState.COMPLETE and hopeless.state == TrialState.PRUNED, lines
        # Stopped before its last epoch of three, at an epoch where it was the worse one.
        stopped = max(hopeless.intermediate_values)
        assert stopped < 3
        assert hopeless.intermediate_values[stopped] > good.intermediate_values[stopped]
        job = own.trainer.GetJob(tpb.GetJobRequest(job_id=hopeless.user_attrs["job torch"]))
        assert job.state == tpb.CANCELLED and len(job.epochs) < 3
        assert any(f"pruned at epoch {stopped}" in line for line in lines)

        (cross,) = sweep.cross_check({"torch": {"params": good.params}})
        (repeat,) = cross["repeats"]
        assert cross["settings_of"] == "torch" and set(repeat["val_loss"]) == {"torch", "tf"}
        for framework, job_id in repeat["jobs"].items():
            job = own.trainer.GetJob(tpb.GetJobRequest(job_id=job_id))
            assert job.state == tpb.SUCCEEDED and job.spec.epochs == 3
            assert list(job.spec.hidden_units) == [256, 128, 128, 32]
            assert repeat["val_loss"][framework] == job.epochs[-1].val_loss
    finally:
        own.close()


# --- without the services ---


def _finished_study(settings, storage: Path, name: str, value: float, **params) -> None:
    """A study as a sweep leaves it: one completed trial of the MLP's space."""
    study = optuna.create_study(study_name=name, storage=open_storage(settings, str(storage)))
    distributions = {k: optuna.distributions.FloatDistribution(1e-5, 1.0) if isinstance(v, float)
                     else optuna.distributions.IntDistribution(1, 1000) for k, v in params.items()}  # fmt: skip
    study.add_trial(
        optuna.trial.create_trial(
            params=params, distributions=distributions, value=value,
            user_attrs={"epochs trained": 2},
        )
    )  # fmt: skip


def test_compare_takes_a_studys_best_settings_epochs_as_trained(settings, tmp_path, capsys):
    from twinbench.cli.experiments import apply_study_params
    from twinbench.cli.main import parser

    storage = tmp_path / "journal.log"
    params = {"learning_rate": 0.0123, "momentum": 0.5, "batch_size": 128, "epochs": 150,
              "units_1": 300, "units_2": 200, "units_3": 150, "units_4": 40}  # fmt: skip
    _finished_study(settings, storage, "mine/tf", 0.25, **params)
    args = parser().parse_args(
        ["compare", "--model", "mlp", "--params", "best-of:mine/tf", "--storage", str(storage)]
    )
    spec = tpb.JobSpec(model="mlp")
    apply_study_params(settings, args, spec)
    assert spec.optimizer.learning_rate == 0.0123 and spec.optimizer.momentum == 0.5
    assert spec.batch_size == 128 and spec.epochs == 2  # what the best trial trained
    assert list(spec.hidden_units) == [300, 200, 150, 40]
    assert "mine/tf" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["sweep", "--model", "lenet5"], "declares no search space"),
        (["sweep", "--name", "mine"], "already has studies (mine/tf)"),
        (["sweep", "--name", "other", "--resume"], "no sweep 'other' to resume"),
        (["sweep", "--trials", "0"], "--trials must be 1 or more"),
        (["compare", "--params", "best-of:nothing/tf"], "no study 'nothing/tf'"),
        (["compare", "--params", "mine/tf"], "--params takes best-of:STUDY"),
    ],
)
def test_bad_sweep_requests_get_a_clear_error(settings, tmp_path, capsys, argv, message):
    from twinbench.cli.main import main

    storage = tmp_path / "journal.log"
    _finished_study(settings, storage, "mine/tf", 0.25, learning_rate=0.01)
    try:
        code = main([*argv, "--storage", str(storage), "--reports", str(tmp_path)])
    except SystemExit as exc:  # argument errors exit from the parser's checks
        code, err = 2, str(exc)
    else:
        err = capsys.readouterr().err
    assert code == 2 and message in err
    TALLY["bad inputs tried"] += 1


def test_an_epochs_cap_narrows_the_searched_epochs_or_removes_them():
    assert search_space("mlp", epochs_cap=50)["epochs"] == IntRange(20, 50)
    assert "epochs" not in search_space("mlp", epochs_cap=2)
    assert search_space("mlp", epochs_cap=500)["epochs"] == MLP_SPACE["epochs"]
    # A trial of the capped space trains the cap.
    spec = job_spec("mlp", paired_point(search_space("mlp", epochs_cap=2), 0, 0), "torch", 0, 2)
    assert spec.epochs == 2


def test_paired_points_are_fixed_by_the_seed_and_inside_the_space():
    points = [paired_point(MLP_SPACE, i, seed=7) for i in range(16)]
    assert points == [paired_point(MLP_SPACE, i, seed=7) for i in range(16)]
    assert points != [paired_point(MLP_SPACE, i, seed=8) for i in range(16)]
    for p in points:
        assert 1e-4 <= p["learning_rate"] <= 0.1 and 0 <= p["momentum"] <= 0.9
        assert p["batch_size"] in (16, 32, 64, 128, 256) and 20 <= p["epochs"] <= 200
        assert 256 <= p["units_1"] <= 512 and 32 <= p["units_4"] <= 128
    # Quasi-random: 16 points cover each half of every numeric range evenly.
    assert sum(p["momentum"] < 0.45 for p in points) == 8


def test_a_database_url_holds_the_studies_like_the_journal(settings, tmp_path):
    url = f"sqlite:///{tmp_path / 'sweeps.db'}"
    options = SweepOptions(
        name="db", model="mlp", trials=1, paired=2, epochs=1, cross_repeats=0, seed=0,
        storage=url, resume=False, reports=tmp_path, command="test",
    )  # fmt: skip
    studies = open_studies(open_storage(settings, url), options)
    assert {s.study_name for s in studies.values()} == {"db/torch", "db/tf", "db/paired"}
    sweep = Sweep(None, studies, options, MLP_SPACE)
    sweep.ensure_points()
    sweep.ensure_points()  # twice: still one waiting trial per point
    waiting = studies["paired"].get_trials(states=(TrialState.WAITING,))
    assert sorted(t.user_attrs["point"] for t in waiting) == [0, 1]
    # Another machine opening the same sweep must say --resume, and then sees the same studies.
    with pytest.raises(Exception, match="--resume"):
        open_studies(open_storage(settings, url), options)
    options.resume = True
    again = open_studies(open_storage(settings, url), options)
    assert len(again["paired"].get_trials(states=(TrialState.WAITING,))) == 2


def test_a_retry_of_a_retry_keeps_every_setting_of_the_first_try(tmp_path):
    """A retry killed while it still drew its settings holds only some as params; the retry
    queued after it still carries the rest, from the settings the killed one was queued with."""
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'study.db'}")
    first = {"learning_rate": 0.01, "batch_size": 64}
    study.enqueue_trial(first)
    retry = study.ask()  # the queued settings: it draws them as it suggests them
    retry.suggest_float("learning_rate", 1e-4, 1.0, log=True)  # killed before batch_size
    study.tell(retry, state=TrialState.FAIL)
    (failed,) = study.get_trials(states=(TrialState.FAIL,))
    assert failed.params == {"learning_rate": 0.01}
    assert retry_settings(failed) == first
