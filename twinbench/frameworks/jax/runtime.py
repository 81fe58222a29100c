"""The runtime that serves a JAX trainer's native exports (`stablehlo`)."""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np

from twinbench.frameworks.jax.device import pick_device
from twinbench.frameworks.jax.export import PROGRAM_FILE, WEIGHTS_FILE


class StableHloRuntime:
    """A jax.export program and its weights, which it takes as inputs.

    Loading deserializes and moves the weights to the device; nothing is compiled until the
    first call, which compiles for its batch size (counted as cold start, as TorchScript's and
    SavedModel's first calls are). XLA compiles per concrete shape: every new batch size
    compiles once. XLA's CPU thread pool belongs to the process, so `threads` is not applied
    (jobs train in processes of their own)."""

    def __init__(self, path: Path, threads: int | None = None) -> None:
        self.device = pick_device("auto")
        self.exported = jax.export.deserialize(bytearray((path / PROGRAM_FILE).read_bytes()))
        with np.load(path / WEIGHTS_FILE) as arrays:
            self.weights = [jax.device_put(arrays[k], self.device) for k in sorted(arrays.files)]
        self.call = jax.jit(self.exported.call)

    def infer(self, *inputs: np.ndarray) -> np.ndarray:
        # Ids are int32 inside JAX (64-bit types off): served INT64, converted here.
        xs = [x.astype(np.int32) if x.dtype.kind in "iu" else x for x in inputs]
        return np.asarray(self.call(*self.weights, *xs))
