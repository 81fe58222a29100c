"""Entry point of the TensorFlow trainer service: `python -m services.tf_trainer`."""

from twinbench.frameworks.tf.framework import TFFramework
from twinbench.trainer.service import serve_trainer

if __name__ == "__main__":
    serve_trainer(TFFramework())
