"""The device a PyTorch job or export runs on."""

from __future__ import annotations

import torch

from twinbench.errors import InvalidArgument


def pick_device(requested: str) -> torch.device:
    if requested == "cuda" and not torch.cuda.is_available():
        raise InvalidArgument("device 'cuda' was asked for, but this trainer sees no CUDA device")
    if requested in ("auto", "cuda") and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


def device_name(device: torch.device) -> str:
    """What a job records as its device: the GPU's name, or "cpu"."""
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
