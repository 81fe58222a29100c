"""TensorFlow/Keras's side of the comparison: the adapter a trainer service and its job workers
load."""

from __future__ import annotations

import keras
import tensorflow as tf

from twinbench.api import trainer_pb2 as tpb
from twinbench.data.datasets import Dataset
from twinbench.frameworks.tf.id_session import TFIdSession
from twinbench.frameworks.tf.q_session import TFQSession
from twinbench.frameworks.tf.runtime import SavedModelRuntime
from twinbench.frameworks.tf.session import TFSession
from twinbench.models.id_models import GNMT, NeuMF
from twinbench.models.spec import ModelSpec
from twinbench.serving.dataplane import Loader, OnnxRuntime
from twinbench.training.rl import QSession
from twinbench.training.session import Session


class TFFramework:
    name = "tf"
    distributed = "twinbench.frameworks.tf.parallel:TFCollective"  # twinbench.training.parallel
    version = f"tensorflow {tf.__version__}, keras {keras.__version__}"
    loaders: dict[str, Loader] = {"savedmodel": SavedModelRuntime, "onnx": OnnxRuntime}

    def set_threads(self, intra_op: int, inter_op: int) -> tuple[int, int]:
        # Only possible before TensorFlow's runtime starts, so a job's process does it first.
        tf.config.threading.set_intra_op_parallelism_threads(intra_op)
        tf.config.threading.set_inter_op_parallelism_threads(inter_op)
        return (
            tf.config.threading.get_intra_op_parallelism_threads(),
            tf.config.threading.get_inter_op_parallelism_threads(),
        )

    def new_session(
        self, spec: tpb.JobSpec, model: ModelSpec | NeuMF | GNMT, data: Dataset
    ) -> Session:
        if isinstance(model, (NeuMF, GNMT)):
            return TFIdSession(spec, model)
        return TFSession(spec, model)

    def new_rl_session(self, spec: tpb.JobSpec, model: ModelSpec) -> QSession:
        return TFQSession(spec, model)
