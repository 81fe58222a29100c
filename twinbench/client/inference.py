"""One input through the gateway: a row of what a served model declares it takes, and its logits."""

from __future__ import annotations

import numpy as np

from twinbench.api import inference_pb2 as ipb
from twinbench.rpc.channel import Client
from twinbench.serving.tensors import infer_request, output_array


def sample_input(
    client: Client, model: str, sample: int, version: str = ""
) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """One row of inputs as the served model declares them, and its truth when known: a test
    image of the embedded dataset for 1x28x28 models, a row of the synthetic data for NCF and
    GNMT, else a seeded random image (twinbench.client.inputs)."""
    from twinbench.client.inputs import model_inputs, served_inputs

    if sample < 0:
        raise SystemExit(f"--sample must be 0 or more, got {sample}")
    metadata = client.inference.ModelMetadata(ipb.ModelMetadataRequest(name=model, version=version))
    config = client.inference.ModelConfig(ipb.ModelConfigRequest(name=model, version=version))
    inputs, truth = model_inputs(served_inputs(metadata, config), rows=1, start=sample)
    return inputs, None if truth is None else truth[0]


def infer_sample(client: Client, model: str, sample: int, version: str = "") -> np.ndarray:
    """Logits of one input (see sample_input), through the gateway."""
    x, _ = sample_input(client, model, sample, version)
    return infer_one(client, model, x, version)


def infer_one(
    client: Client, model: str, x: np.ndarray | dict[str, np.ndarray], version: str = ""
) -> np.ndarray:
    request = infer_request(model, x, version=version)
    return output_array(client.inference.ModelInfer(request), "logits")[0]
