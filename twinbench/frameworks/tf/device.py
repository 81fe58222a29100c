"""The device a TensorFlow job runs on."""

from __future__ import annotations

import tensorflow as tf

from twinbench.errors import InvalidArgument


def pick_device(requested: str) -> str:
    gpus = tf.config.list_logical_devices("GPU")
    if requested == "cuda" and not gpus:
        raise InvalidArgument("device 'cuda' was asked for, but this trainer sees no GPU")
    return gpus[0].name if requested in ("auto", "cuda") and gpus else "/CPU:0"


def device_name(device: str) -> str:
    """What a job records as its device: the GPU's name, or "cpu"."""
    if "CPU" in device:
        return "cpu"
    details = tf.config.experimental.get_device_details(tf.config.list_physical_devices("GPU")[0])
    return str(details.get("device_name", "GPU"))
