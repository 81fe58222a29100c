"""Entry point of the JAX trainer service: `python -m services.jax_trainer`."""

from twinbench.frameworks.jax.framework import JaxFramework
from twinbench.trainer.service import serve_trainer

if __name__ == "__main__":
    serve_trainer(JaxFramework())
