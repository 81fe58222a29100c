"""Entry point of the PyTorch trainer service: `python -m services.torch_trainer`."""

from services.torch_trainer.framework import TorchFramework
from twinbench.trainer_service import serve_trainer

if __name__ == "__main__":
    serve_trainer(TorchFramework())
