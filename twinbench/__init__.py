"""twinbench: train one network in PyTorch and TensorFlow, serve every export, compare."""

__version__ = "0.1.0"
