"""Inputs for a served model, built from what it declares (its V2 metadata and ModelConfig) and
its dataset, so that `twinbench infer`, the Locust load test and the serving benchmark send every
model what it takes: MNIST test images to 1x28x28 models, seeded random images to other image
models, and rows of the synthetic data to NCF and GNMT (shaped by their id ranges).

Imports neither torch nor TensorFlow (Locust uses it).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from twinbench.api import inference_pb2 as ipb
from twinbench.serving.repository import InputSpec

ID_LIMIT = ".id_limit"  # ModelConfig parameter "<input>.id_limit" (twinbench.serving.repository)


def served_inputs(
    metadata: ipb.ModelMetadataResponse, config: ipb.ModelConfigResponse | None
) -> tuple[InputSpec, ...]:
    """A served model's inputs: names, datatypes and shapes from its metadata, id ranges from
    its config (absent from a server that does not set them: ids are then 0)."""
    limits = {}
    if config is not None:
        for key, value in config.config.parameters.items():
            if key.endswith(ID_LIMIT) and value.string_value.isdigit():
                limits[key.removesuffix(ID_LIMIT)] = int(value.string_value)
    return tuple(
        InputSpec(t.name, t.datatype, tuple(int(d) for d in t.shape[1:]), limits.get(t.name, 0))
        for t in metadata.inputs
    )


def model_inputs(
    specs: tuple[InputSpec, ...], rows: int = 1, start: int = 0
) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """`rows` rows of inputs from row `start` on (wrapping around), and their labels when the
    data has them (a class, NCF's interaction, GNMT's target tokens); None for random inputs."""
    from twinbench.data.datasets import load_dataset
    from twinbench.models.id_models import GNMT, ID_MODELS, NeuMF
    from twinbench.models.tasks import task_for

    names = [s.name for s in specs]
    limits = {s.name: s.id_limit for s in specs}
    declared: NeuMF | GNMT | None = None
    ncf, gnmt = ID_MODELS["ncf"], ID_MODELS["gnmt"]
    if names == ["user", "item"] and all(limits.values()) and isinstance(ncf, NeuMF):
        declared = replace(ncf, users=limits["user"], items=limits["item"])
    elif names == ["source", "target"] and all(limits.values()) and isinstance(gnmt, GNMT):
        (s,), (t,) = specs[0].shape, specs[1].shape
        declared = replace(gnmt, vocab=limits["source"], source_length=s, target_length=t)
    if declared is not None:
        data = load_dataset("synthetic", declared).test
        pick = (start + np.arange(rows)) % len(data)
        tensors = task_for(declared).split(data.x[pick])
        return dict(zip(names, tensors, strict=True)), data.y[pick]
    if len(specs) == 1 and specs[0].datatype == "FP32" and specs[0].shape == (1, 28, 28):
        data = load_dataset("mnist-5k").test
        pick = (start + np.arange(rows)) % len(data)
        return {names[0]: data.x[pick]}, data.y[pick]
    rng = np.random.default_rng(start)
    out: dict[str, np.ndarray] = {}
    for spec in specs:
        shape = (rows, *spec.shape)
        if spec.datatype == "FP32":
            out[spec.name] = rng.random(shape, dtype=np.float32)
        else:  # ids: within the declared range, or 0, which every table has
            out[spec.name] = rng.integers(0, max(spec.id_limit, 1), shape, dtype=np.int64)
    return out, None
