"""Entry point of the TensorFlow trainer service: `python -m services.tf_trainer`."""

from services.tf_trainer.framework import TFFramework
from twinbench.trainer_service import serve_trainer

if __name__ == "__main__":
    serve_trainer(TFFramework())
