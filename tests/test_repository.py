"""Exports appear whole or not at all, in Triton's layout."""

import pytest

from twinbench.serving.repository import ModelRepository

FIELDS = dict(
    model="lenet5",
    framework="torch",
    job_id="torch-1",
    input_shape=(1, 28, 28),
    num_classes=10,
    class_names=tuple("0123456789"),
    max_batch_size=8,
    max_abs_diff=0.0,
)


def test_publish_numbers_versions_and_writes_triton_config(tmp_path):
    repo = ModelRepository(tmp_path)
    for expected in (1, 2):
        with repo.stage("lenet5-torch-onnx", "onnx") as staging:
            staging.model_path.write_bytes(b"model bytes")
            assert repo.versions("lenet5-torch-onnx") == list(range(1, expected))  # not yet
            info = staging.publish(**FIELDS)
        assert info.version == expected
    assert repo.versions("lenet5-torch-onnx") == [1, 2]
    assert (tmp_path / "lenet5-torch-onnx" / "2" / "model.onnx").read_bytes() == b"model bytes"
    config = (tmp_path / "lenet5-torch-onnx" / "config.pbtxt").read_text()
    assert 'platform: "onnxruntime_onnx"' in config and "max_batch_size: 8" in config
    assert repo.info("lenet5-torch-onnx", 2).sha256 == info.sha256
    # Nothing staged is left behind.
    assert [
        p.name for p in (tmp_path / "lenet5-torch-onnx").iterdir() if p.name.startswith(".")
    ] == []


def test_a_failed_export_leaves_nothing(tmp_path):
    repo = ModelRepository(tmp_path)
    with pytest.raises(RuntimeError):
        with repo.stage("lenet5-torch-onnx", "onnx") as staging:
            staging.model_path.write_bytes(b"half a model")
            raise RuntimeError("export check failed")
    assert repo.names() == []
    assert list((tmp_path / "lenet5-torch-onnx").iterdir()) == []


def test_names_that_are_paths_are_not_models(tmp_path):
    repo = ModelRepository(tmp_path)
    assert repo.versions("../etc") == [] and repo.versions("/abs") == []
