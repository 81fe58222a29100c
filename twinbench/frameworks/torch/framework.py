"""PyTorch's side of the comparison: the adapter a trainer service and its job workers load."""

from __future__ import annotations

import warnings

import torch
from torch import nn

from twinbench.api import trainer_pb2 as pb
from twinbench.data.datasets import Dataset
from twinbench.frameworks.torch.q_session import TorchQSession
from twinbench.frameworks.torch.session import TorchIdSession, TorchScriptRuntime, TorchSession
from twinbench.models.id_models import GNMT, NeuMF
from twinbench.models.spec import ModelSpec
from twinbench.serving.dataplane import OnnxRuntime

# Request tensors are read-only views over the request bytes; the models never write to them.
warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
# TorchScript and the TorchScript-based ONNX exporter are deprecated but remain what Triton and
# ONNX Runtime load; the dynamo exporter would need onnxscript.
warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.jit")
warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.(jit|onnx)")

PREDICT_BATCH = 1024
ONNX_OPSET = 17

# Pinned the same way as in the TF trainer before anything is timed (TF32 is on by default for
# cuDNN convolutions in PyTorch and for everything in TensorFlow).
torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False

_ACTIVATIONS = {"relu": nn.ReLU, "relu6": nn.ReLU6}


class TorchFramework:
    name = "torch"
    distributed = "twinbench.frameworks.torch.parallel:TorchCollective"  # data-parallel jobs
    version = torch.__version__
    loaders = {"torchscript": TorchScriptRuntime, "onnx": OnnxRuntime}

    def set_threads(self, intra_op: int, inter_op: int) -> tuple[int, int]:
        torch.set_num_threads(intra_op)
        torch.set_num_interop_threads(inter_op)  # once per process, before any parallel work
        return torch.get_num_threads(), torch.get_num_interop_threads()

    def new_session(
        self, spec: pb.JobSpec, model: ModelSpec | NeuMF | GNMT, data: Dataset
    ) -> TorchSession | TorchIdSession:
        if isinstance(model, (NeuMF, GNMT)):
            return TorchIdSession(spec, model)
        return TorchSession(spec, model)

    def new_rl_session(self, spec: pb.JobSpec, model: ModelSpec):
        return TorchQSession(spec, model)
