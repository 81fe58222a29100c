"""The TorchScript runtime that serves a PyTorch trainer's exports."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import torch

from twinbench.frameworks.torch.device import pick_device

_serving_thread = threading.local()


class TorchScriptRuntime:
    """A TorchScript export, run in inference mode.

    With `threads`, each serving thread runs its calls on that many intra-op threads. The
    setting is per calling thread (OpenMP) and inherited by threads started later, one reason
    training jobs run in processes of their own (twinbench.training.worker). Measured on 2 cores,
    LeNet-5 at batch 1: 0.15 ms of CPU with one thread, 0.41 ms with two, which mostly spin.
    """

    def __init__(self, path: Path, threads: int | None = None) -> None:
        self.device = pick_device("auto")
        self.module = torch.jit.load(str(path), map_location=self.device).eval()
        self.threads = threads

    def infer(self, *inputs: np.ndarray) -> np.ndarray:
        if self.threads and getattr(_serving_thread, "threads", None) != self.threads:
            torch.set_num_threads(self.threads)
            _serving_thread.threads = self.threads
        with torch.inference_mode():
            tensors = (torch.from_numpy(x).to(self.device) for x in inputs)
            return self.module(*tensors).cpu().numpy()
