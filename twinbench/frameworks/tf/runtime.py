"""The SavedModel runtime that serves a TensorFlow trainer's exports."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tensorflow as tf


class SavedModelRuntime:
    """A SavedModel's serving signature. TensorFlow's thread pools belong to the process, so
    `threads` is not applied here (jobs train in processes of their own)."""

    def __init__(self, path: Path, threads: int | None = None) -> None:
        self.loaded = tf.saved_model.load(str(path))
        self.fn = self.loaded.signatures["serving_default"]
        # The inputs in their declared order: the signature takes them by name (and lists them
        # sorted), the saved `serve` function keeps their order.
        self.input_names = [spec.name for spec in self.loaded.serve.input_signature]

    def infer(self, *inputs: np.ndarray) -> np.ndarray:
        arguments = {n: tf.constant(x) for n, x in zip(self.input_names, inputs, strict=True)}
        return self.fn(**arguments)["logits"].numpy()
