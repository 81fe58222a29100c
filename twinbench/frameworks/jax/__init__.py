"""JAX's adapter (Flax NNX, Optax), and the process-wide settings JAX reads before it first runs:
made here, so that every module of the package (the parity check's builders too) runs under them."""

import os

# Read when the first backend starts. On a GPU JAX would otherwise take 75% of its memory at
# once; like TensorFlow's memory growth, this lets trainers share one GPU and makes the peak
# figure the job's own.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import jax  # noqa: E402 - after the environment it reads

# The no-TF32 rule of the other two: full float32 matmuls and convolutions on a GPU (a no-op on
# a CPU). The persistent compilation cache stays off: every job compiles cold, in its warm-up.
jax.config.update("jax_default_matmul_precision", "highest")
jax.config.update("jax_enable_compilation_cache", False)
