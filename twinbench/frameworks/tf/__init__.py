"""TensorFlow/Keras's adapter, and the process-wide settings TensorFlow takes only before it first
runs: made here, so that every module of the package (the parity check's builders too) runs
under them."""

import os

# TensorFlow reads its log level once, when it is first imported.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402 - after the log level

# Both must happen before TensorFlow touches a GPU. Memory growth lets the two trainers share
# one GPU (TF would otherwise take all of it); TF32 is pinned off as in the torch trainer.
for _gpu in tf.config.list_physical_devices("GPU"):
    tf.config.experimental.set_memory_growth(_gpu, True)
tf.config.experimental.enable_tensor_float_32_execution(False)
