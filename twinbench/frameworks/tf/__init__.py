"""TensorFlow/Keras's adapter. TensorFlow reads its log level once, when it is first imported, so
it is set here, before any module of this package imports it."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
