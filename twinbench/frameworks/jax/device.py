"""The device a JAX job or export runs on."""

from __future__ import annotations

import jax

from twinbench.errors import InvalidArgument


def _gpus() -> list[jax.Device]:
    try:
        return jax.devices("gpu")
    except RuntimeError:  # no GPU backend in this installation
        return []


def pick_device(requested: str) -> jax.Device:
    gpus = _gpus()
    if requested == "cuda" and not gpus:
        raise InvalidArgument("device 'cuda' was asked for, but this trainer sees no GPU")
    if requested in ("auto", "cuda") and gpus:
        return gpus[0]
    return jax.devices("cpu")[0]


def device_name(device: jax.Device) -> str:
    """What a job records as its device: the GPU's name, or "cpu"."""
    return "cpu" if device.platform == "cpu" else str(device.device_kind)
