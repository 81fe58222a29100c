"""PyTorch's adapter, and the process-wide settings made before anything runs: here, so that
every module of the package (the parity check's builders too) runs under them."""

import warnings

import torch

# Pinned the same way as in the TF trainer before anything is timed (TF32 is on by default for
# cuDNN convolutions in PyTorch and for everything in TensorFlow).
torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False

# Request tensors are read-only views over the request bytes; the models never write to them.
warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
# TorchScript and the TorchScript-based ONNX exporter are deprecated but remain what Triton and
# ONNX Runtime load; the dynamo exporter would need onnxscript.
warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.jit")
warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.(jit|onnx)")
