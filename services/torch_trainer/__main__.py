"""Entry point of the PyTorch trainer service: `python -m services.torch_trainer`."""

from twinbench.frameworks.torch.framework import TorchFramework
from twinbench.trainer.service import serve_trainer

if __name__ == "__main__":
    serve_trainer(TorchFramework())
