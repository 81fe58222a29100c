"""PyTorch's side of the comparison: the adapter a trainer service and its job workers load."""

from __future__ import annotations

import torch

from twinbench.api import trainer_pb2 as tpb
from twinbench.data.datasets import Dataset
from twinbench.frameworks.torch.id_session import TorchIdSession
from twinbench.frameworks.torch.q_session import TorchQSession
from twinbench.frameworks.torch.runtime import TorchScriptRuntime
from twinbench.frameworks.torch.session import TorchSession
from twinbench.models.id_models import GNMT, NeuMF
from twinbench.models.spec import ModelSpec
from twinbench.serving.dataplane import Loader, OnnxRuntime
from twinbench.training.rl import QSession
from twinbench.training.session import Session


class TorchFramework:
    name = "torch"
    distributed = "twinbench.frameworks.torch.parallel:TorchCollective"  # data-parallel jobs
    version = str(torch.__version__)  # a TorchVersion, which compares as a version, not a str
    loaders: dict[str, Loader] = {"torchscript": TorchScriptRuntime, "onnx": OnnxRuntime}

    def set_threads(self, intra_op: int, inter_op: int) -> tuple[int, int]:
        torch.set_num_threads(intra_op)
        torch.set_num_interop_threads(inter_op)  # once per process, before any parallel work
        return torch.get_num_threads(), torch.get_num_interop_threads()

    def new_session(
        self, spec: tpb.JobSpec, model: ModelSpec | NeuMF | GNMT, data: Dataset
    ) -> Session:
        if isinstance(model, (NeuMF, GNMT)):
            return TorchIdSession(spec, model)
        return TorchSession(spec, model)

    def new_rl_session(self, spec: tpb.JobSpec, model: ModelSpec) -> QSession:
        return TorchQSession(spec, model)
