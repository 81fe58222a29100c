"""Fine-tuning VGG16: one torchvision weights file read without PyTorch, loaded by both
frameworks, and a job on the real services that trains the new top and leaves the base as it was."""

from __future__ import annotations

import collections

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import wait_for
from twinbench.api import trainer_pb2 as tpb
from twinbench.data.pretrained import (
    WeightsFileError,
    base_weights,
    make_random_weights_file,
    read_state_dict,
    torchvision_keys,
    weights_path,
)
from twinbench.errors import InvalidArgument
from twinbench.jobs.request import resolve_spec
from twinbench.models.catalogue import get_model_spec

SMALL = dict(width=0.125, image_size=32)


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_state_dicts_are_read_without_pytorch_in_both_file_formats(tmp_path, zip_format):
    """torch.save's zip archive, and the older stream format torchvision's VGG16 file has;
    views and transposed tensors come back as torch.load gives them."""
    t = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    state = collections.OrderedDict(
        [("a", t), ("view", t[1:, 2:]), ("transposed", t.t()), ("ints", torch.arange(3))]
    )
    path = tmp_path / "w.pth"
    torch.save(state, path, _use_new_zipfile_serialization=zip_format)
    read = read_state_dict(path)
    assert list(read) == list(state)
    for key, tensor in state.items():
        np.testing.assert_array_equal(read[key], tensor.numpy())


def test_a_file_that_is_not_a_state_dict_is_refused(tmp_path):
    bad = tmp_path / "bad.pth"
    torch.save({"model": torch.nn.Linear(2, 2)}, bad)  # a pickled module: code, not data
    with pytest.raises(WeightsFileError, match="not a readable PyTorch state_dict"):
        read_state_dict(bad)


def test_keys_are_torchvisions_and_shapes_are_checked(tmp_path):
    from torchvision.models import vgg16

    spec = get_model_spec("vgg16_finetune")
    convs = [k for k in vgg16().state_dict() if k.startswith("features.")]
    assert [k for pair in torchvision_keys(spec) for k in pair] == convs
    small = get_model_spec("vgg16_finetune", **SMALL)
    path = make_random_weights_file(small, tmp_path / "small.pth")
    assert len(base_weights(small, path)) == 13
    with pytest.raises(WeightsFileError, match="another width"):
        base_weights(spec, path)  # a width-1 model from a file made at width 0.125
    with pytest.raises(WeightsFileError, match="twinbench data download vgg16-weights"):
        base_weights(spec, tmp_path / "absent.pth")
    with pytest.raises(InvalidArgument, match="relative to the data folder"):
        weights_path(spec, tmp_path, "../elsewhere.pth")
    with pytest.raises(InvalidArgument, match="pretrained_weights is for fine-tuning"):
        resolve_spec(tpb.JobSpec(framework="torch", model="lenet5", pretrained_weights="w.pth"))


def _image_folder(root, per_class: int = 24) -> None:
    """Two classes a network can tell apart: reddish and bluish noise."""
    rng = np.random.default_rng(0)
    for label, cls in enumerate(("cats", "dogs")):
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = rng.integers(0, 120, (40, 40, 3))
            pixels[..., 0 if label == 0 else 2] += 120
            Image.fromarray(pixels.astype(np.uint8)).save(root / cls / f"{i}.png")


def test_a_fine_tuning_job_trains_only_the_top_in_both_frameworks(client, settings):
    small = get_model_spec("vgg16_finetune", **SMALL)
    folder = settings.data / "finetune-test"
    _image_folder(folder / "images")
    make_random_weights_file(small, folder / "vgg16-small.pth", seed=5)
    spec = tpb.JobSpec(
        framework="both",
        model="vgg16_finetune",
        dataset="imagefolder:finetune-test/images",
        pretrained_weights="finetune-test/vgg16-small.pth",
        epochs=2,
        batch_size=8,
        **SMALL,
    )
    base = sum(a.size for arrays in base_weights(small, folder / "vgg16-small.pth") for a in arrays)
    for created in client.trainer.CreateJob(tpb.CreateJobRequest(spec=spec)).jobs:
        job, _ = wait_for(client, created.id)
        assert job.state == tpb.SUCCEEDED, job.error
        ft = job.fine_tuning
        assert ft.weights_path == "finetune-test/vgg16-small.pth" and len(ft.weights_sha256) == 64
        assert ft.frozen_parameters == base
        assert ft.frozen_max_change == 0.0  # not one frozen weight moved
        assert job.parameter_count == small.parameter_count() - base  # only the top trains
        assert len(job.epochs) == 2 and all(np.isfinite(e.train_loss) for e in job.epochs)
        assert "horizontal" in job.fairness["augmentation"]
        assert job.exports


def test_the_download_puts_the_file_where_jobs_look_for_it(tmp_path):
    from twinbench.data.download import SOURCES

    spec = get_model_spec("vgg16_finetune")
    source = SOURCES[spec.pretrained.download]  # `twinbench data download vgg16-weights`
    (filename,) = source.sha256
    # download() writes data_root/<name>/<file>: the path a job reads by default.
    assert weights_path(spec, tmp_path) == tmp_path / "vgg16-weights" / filename
    # torchvision names its files after the start of their sha256.
    assert source.sha256[filename].startswith(filename.split("-")[1].split(".")[0])
    assert source.base_url + filename == "https://download.pytorch.org/models/vgg16-397923af.pth"
