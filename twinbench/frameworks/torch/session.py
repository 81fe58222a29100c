"""PyTorch sessions: what every job's session does alike (TorchSessionBase), and the image
models' session built from a declared model spec."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from twinbench.api import trainer_pb2 as tpb
from twinbench.data.pretrained import pretrained_base
from twinbench.errors import InvalidArgument
from twinbench.frameworks.torch.device import device_name, pick_device
from twinbench.frameworks.torch.models import build_model, load_base, load_weights, model_weights
from twinbench.jobs.precision import GROWTH_STEPS, INITIAL_LOSS_SCALE, compute_dtype, recorded
from twinbench.jobs.precision import describe as describe_precision
from twinbench.models.id_models import GNMT, NeuMF
from twinbench.models.initial_weights import SHARED_INIT, Weights, shared_initial_weights
from twinbench.models.spec import Augment, ModelSpec
from twinbench.models.tasks import Task, task_for

PREDICT_BATCH = 1024
ONNX_OPSET = 17

OWN_INIT = "PyTorch's own: Kaiming uniform (a=sqrt 5), biases U(+-1/sqrt fan_in)"
# Every input of an export is one of these V2 datatypes (twinbench.serving.repository.InputSpec).
_DTYPES = {"FP32": torch.float32, "INT64": torch.int64}


def make_optimizer(parameters: Iterator[nn.Parameter], opt: tpb.Optimizer) -> torch.optim.Optimizer:
    """The job's optimizer with every constant set from the spec, none left to PyTorch's
    defaults (docs/fairness.md); one place for every kind of session."""
    if opt.name == "adam":
        return torch.optim.Adam(parameters, lr=opt.learning_rate, eps=opt.epsilon)
    return torch.optim.SGD(parameters, lr=opt.learning_rate, momentum=opt.momentum)


def optimizer_fairness(opt: tpb.Optimizer) -> str:
    if opt.name == "adam":
        return f"Adam, eps {opt.epsilon:g} added after the bias correction"
    return f"SGD, momentum {opt.momentum:g}: v = mu v + g, w -= lr v"


class TorchSessionBase:
    """One job's model and optimizer on its device: what the image, id-input and Q-network
    sessions share. A subclass builds the model (`new_model`) and trains it; the inputs of
    predict and of exports are those of the declaration's task (twinbench.models.tasks)."""

    # The fairness record's "init", for a shared start and for PyTorch's own initialisation.
    shared_init = SHARED_INIT
    own_init = OWN_INIT

    def __init__(
        self,
        spec: tpb.JobSpec,
        declared: ModelSpec | NeuMF | GNMT,
        memory_format: torch.memory_format = torch.contiguous_format,
    ) -> None:
        self.spec = spec
        self.task: Task = task_for(declared)
        self.device = pick_device(spec.device)
        self.device_name = device_name(self.device)
        # Mixed precision (twinbench.jobs.precision) for the sessions that offer it; the job's
        # request refuses it for the others, which run fp32.
        dtype = compute_dtype(spec.precision, on_gpu=self.device.type == "cuda")
        self.compute_dtype, self.precision = dtype, recorded(dtype)
        torch.manual_seed(spec.seed)  # PyTorch's own initial weights draw from it
        self.memory_format = memory_format
        self.model: nn.Module = self.new_model().to(self.device).to(memory_format=memory_format)
        # Frozen weights (a fine-tuning job's base) are not trained, so not counted.
        self.parameter_count = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        self.optimizer = make_optimizer(self.model.parameters(), spec.optimizer)
        if self.device.type == "cuda":  # the peak of this job, not of the process
            torch.cuda.reset_peak_memory_stats(self.device)
        # The training forward pass only; evaluation and exports use the eager model. Inductor's
        # cache is the job's own, cold (twinbench.training.worker), so compiling is timed in
        # warm-up. Data-parallel jobs put DistributedDataParallel here (parallel.py).
        self.forward: Callable[..., torch.Tensor] = (
            torch.compile(self.model) if spec.compiled else self.model
        )

    def new_model(self) -> nn.Module:
        """The job's model with its initial weights, on the CPU; called once the seed is set."""
        raise NotImplementedError

    def fairness(self) -> dict[str, str]:
        """What every session sets alike; a subclass adds its own entries."""
        return {
            "init": self.shared_init if self.spec.init == "shared" else self.own_init,
            "optimizer": optimizer_fairness(self.spec.optimizer),
            "tf32": "off for matmul and cuDNN",
            "compilation": "torch.compile (Inductor), cold job-private cache, compiled in the"
            " warm-up steps"
            if self.spec.compiled
            else "eager (no torch.compile)",
        }

    def prepare(self, x: np.ndarray) -> np.ndarray:
        return x  # the shared layout is PyTorch's: NCHW images, ids, state vectors

    def inputs(self, x: np.ndarray) -> list[torch.Tensor]:
        """The model's input tensors, on the device, for prepared rows."""
        return [torch.from_numpy(a).to(self.device) for a in self.task.split(x)]

    def predict(self, x: np.ndarray) -> np.ndarray:
        self.model.eval()
        out = []
        with torch.inference_mode():
            for start in range(0, len(x), PREDICT_BATCH):
                batch = self.inputs(x[start : start + PREDICT_BATCH])
                out.append(self.model(*batch).float().cpu().numpy())
        return np.concatenate(out)

    def export(self, fmt: str, path: Path) -> None:
        # Exports are traced on the CPU so they load on any host; the runtime moves them to a GPU.
        model = copy.deepcopy(self.model).cpu().eval()
        inputs = self.task.inputs
        names = [i.name for i in inputs]
        example = tuple(torch.zeros((2, *i.shape), dtype=_DTYPES[i.datatype]) for i in inputs)
        if fmt == "torchscript":
            with torch.inference_mode():
                torch.jit.save(torch.jit.trace(model, example), str(path))
        elif fmt == "onnx":
            torch.onnx.export(
                model,
                example,
                str(path),
                input_names=names,
                output_names=["logits"],
                dynamic_axes={**{n: {0: "batch"} for n in names}, "logits": {0: "batch"}},
                opset_version=ONNX_OPSET,
                dynamo=False,
            )
        else:
            raise InvalidArgument(f"the torch trainer cannot export {fmt!r}")

    def peak_gpu_bytes(self) -> int:
        if self.device.type != "cuda":
            return 0
        return int(torch.cuda.max_memory_allocated(self.device))

    def checkpoint_state(self) -> dict[str, Any]:
        """What resuming needs; a subclass adds what its training carries besides."""
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict()}

    def restore(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])

    def save_checkpoint(self, path: Path) -> None:
        tmp = path.with_suffix(".tmp")
        torch.save(self.checkpoint_state(), tmp)
        tmp.replace(path)  # whole or not at all: a job killed mid-write resumes from the last

    def load_checkpoint(self, path: Path) -> None:
        self.restore(torch.load(path, map_location=self.device, weights_only=True))


class TorchAugment:
    """Training augmentation on the device, with its own seeded generator."""

    def __init__(self, augment: Augment, seed: int) -> None:
        self.augment = augment
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        if self.augment.horizontal_flip:
            flip = (torch.rand(n, generator=self.generator) < 0.5).to(x.device)
            x = torch.where(flip[:, None, None, None], x.flip(3), x)
        if self.augment.rotation_degrees:
            limit = math.radians(self.augment.rotation_degrees)
            angle = (torch.rand(n, generator=self.generator) * 2 - 1) * limit
            cos, sin, zero = angle.cos(), angle.sin(), torch.zeros(n)
            theta = torch.stack([cos, -sin, zero, sin, cos, zero], dim=1).view(n, 2, 3)
            grid = nn.functional.affine_grid(theta.to(x.device), list(x.shape), align_corners=False)
            x = nn.functional.grid_sample(
                x, grid, mode="nearest", padding_mode="zeros", align_corners=False
            )
        return x


class TorchSession(TorchSessionBase):
    """A job of a declared model spec (twinbench.models): images in, class logits out; also
    fine-tuning (a frozen pretrained base), channels-last and mixed precision."""

    def __init__(self, spec: tpb.JobSpec, model_spec: ModelSpec) -> None:
        self.model_spec = model_spec
        # Channels-last levels the layouts with Keras, which is NHWC throughout.
        layout = torch.channels_last if spec.channels_last else torch.contiguous_format
        super().__init__(spec, model_spec, layout)
        augment = model_spec.augment
        self.augment = TorchAugment(augment, spec.seed) if augment else None
        # Mixed precision: autocast for the forward pass, and a loss scaler for float16 that
        # starts where Keras's does.
        dtype = self.compute_dtype
        self.autocast_dtype = getattr(torch, dtype) if dtype else None
        self.scaler = torch.amp.GradScaler(
            self.device.type,
            init_scale=INITIAL_LOSS_SCALE,
            growth_interval=GROWTH_STEPS,
            enabled=dtype == "float16",
        )

    def new_model(self) -> nn.Module:
        spec, model_spec = self.spec, self.model_spec
        model = build_model(model_spec)
        if spec.init == "shared":
            load_weights(model, shared_initial_weights(model_spec, spec.seed))
        if model_spec.pretrained:  # fine-tuning: the base from the weights file, frozen
            load_base(model, pretrained_base(spec, model_spec), freeze=True)
        return model

    def fairness(self) -> dict[str, str]:
        augment = self.model_spec.augment
        return {
            **super().fairness(),
            "padding": "'same' as symmetric zero padding of kernel//2 (stride 1 only)",
            "layout": "channels-last (NHWC in memory)" if self.spec.channels_last else "NCHW",
            "precision": describe_precision(self.compute_dtype),
            "augmentation": "none"
            if not augment
            else f"horizontal flip p=0.5: {augment.horizontal_flip}; rotation"
            f" +-{augment.rotation_degrees:g} degrees, nearest, zero fill (grid_sample)",
        }

    def checkpoint_state(self) -> dict[str, Any]:
        state = super().checkpoint_state()
        if self.augment:
            state["augment_rng"] = self.augment.generator.get_state()
        if self.scaler.is_enabled():  # the loss scale reached, so a resumed job goes on from it
            state["scaler"] = self.scaler.state_dict()
        return state

    def restore(self, state: dict[str, Any]) -> None:
        super().restore(state)
        if self.augment and "augment_rng" in state:
            self.augment.generator.set_state(state["augment_rng"].cpu())
        if "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])

    def train_batch(self, x: np.ndarray, y: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        self.model.train()
        inputs = torch.from_numpy(x).to(self.device, non_blocking=True)
        labels = torch.from_numpy(y).to(self.device, non_blocking=True)
        if self.augment:
            inputs = self.augment(inputs)
        with torch.autocast(
            self.device.type, dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None
        ):
            logits = self.forward(inputs.contiguous(memory_format=self.memory_format))
        loss = nn.functional.cross_entropy(logits.float(), labels)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()  # with no float16, scale and step pass straight through
        self.scaler.step(self.optimizer)
        self.scaler.update()
        hits = (logits.argmax(dim=1) == labels).sum()
        return loss.detach(), hits  # read by the loop at the end of a timed segment

    def base_max_change(self, base: Weights) -> float:
        """The largest |now - pretrained| of a fine-tuning job's frozen weights."""
        return max(
            float(np.max(np.abs(now - then)))
            for arrays, pretrained in zip(model_weights(self.model), base, strict=False)
            for now, then in zip(arrays, pretrained, strict=True)
        )
