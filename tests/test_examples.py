"""Every example script runs as a user would run it (`--smoke`), and trains, saves, loads, predicts."""

from __future__ import annotations

import ast
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

from twinbench.experiments.code_size import EXAMPLES, FRAMEWORK_SCRIPTS, example_tasks

SCRIPTS = [
    EXAMPLES / task / script for task in example_tasks() for script in FRAMEWORK_SCRIPTS.values()
]
LOADED = re.compile(r"^loaded (?P<path>\S+): predicted (?P<label>\d+) for one (image|state)", re.M)
# What shows that a script trained: a loss per epoch, or a reward per episode for the DQN.
TRAINED = re.compile(r"loss:? (?P<value>[0-9.]+)|^episode \d+: reward (?P<reward>\d+)", re.M)


def test_every_task_has_a_script_per_framework():
    assert set(example_tasks()) == {"mnist_cnn", "mlp", "lenet5", "dqn_cartpole", "vgg16_finetune"}
    for task in example_tasks():
        for script in FRAMEWORK_SCRIPTS.values():
            assert (EXAMPLES / task / script).is_file(), f"{task}/{script} is missing"


def test_scripts_import_nothing_of_twinbench():
    for script in SCRIPTS:
        assert "twinbench" not in script.read_text(), f"{script} must stand alone"


# Each script needs only its own framework's stack (the JAX ones read Keras's ImageNet file with
# h5py, not with Keras).
OTHER_FRAMEWORKS = {
    "torch": {"tensorflow", "keras", "jax", "flax", "optax"},
    "tf": {"torch", "torchvision", "jax", "flax", "optax"},
    "jax": {"torch", "torchvision", "tensorflow", "keras", "tensorflow_datasets"},
}


@pytest.mark.parametrize("framework", sorted(FRAMEWORK_SCRIPTS))
def test_scripts_import_no_other_framework(framework: str):
    for task in example_tasks():
        script = EXAMPLES / task / FRAMEWORK_SCRIPTS[framework]
        imported = set()
        for node in ast.walk(ast.parse(script.read_text())):
            if isinstance(node, ast.Import):
                imported |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                imported.add(node.module.split(".")[0])
        assert not imported & OTHER_FRAMEWORKS[framework], f"{script}: {imported}"


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_script_trains_saves_loads_and_predicts(script: Path, tmp_path: Path):
    run = subprocess.run(
        [sys.executable, str(script), "--smoke", "--out", str(tmp_path)],
        cwd=tmp_path,  # anything a script writes by default lands here, not in the checkout
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    trained = [m for m in TRAINED.finditer(run.stdout)]
    assert trained, f"no loss or episode reward printed:\n{run.stdout[-2000:]}"
    for match in trained:
        value = float(match["value"] or match["reward"])
        assert math.isfinite(value) and value >= 0
    loaded = LOADED.search(run.stdout)
    assert loaded, f"no prediction from the reloaded model:\n{run.stdout[-2000:]}"
    saved = Path(loaded["path"])
    assert saved.parent == tmp_path
    if saved.is_dir():  # a checkpoint folder (Orbax, for JAX) holds the weights' files
        assert any(f.stat().st_size > 0 for f in saved.rglob("*") if f.is_file())
    else:
        assert saved.is_file() and saved.stat().st_size > 0
    classes = 2 if script.parent.name in ("dqn_cartpole", "vgg16_finetune") else 10
    assert 0 <= int(loaded["label"]) < classes
    if script.parent.name == "mnist_cnn":
        assert (tmp_path / "samples.png").read_bytes().startswith(b"\x89PNG")
    if script.parent.name == "dqn_cartpole":  # the reloaded policy also plays, greedily
        played = re.search(
            r"^greedy mean reward over 3 episodes: (?P<mean>[0-9.]+)$", run.stdout, re.M
        )
        assert played and 1 <= float(played["mean"]) <= 500, run.stdout[-2000:]
