"""What a job's model is asked to do: its inputs, its loss, its metrics and its unit of throughput.

The training loop (twinbench/training/loop.py) is the same for every model; a task decides only what
differs between image classification, NCF's implicit-feedback ranking and GNMT's teacher-forced
sequence prediction. A dataset split keeps one array of inputs per row (`Split.x`) and one of
labels (`Split.y`); the task cuts a row of inputs into the model's input tensors:

- classification: x is N x C x H x W float32 images, y the class; loss: mean cross-entropy on
  logits; metric: accuracy; unit: images.
- ranking (NCF): x is N x 2 int64 (user id, item id), y is 1 for an interaction and 0 for a
  sampled negative; loss: mean binary cross-entropy on the one logit; metric: binary accuracy
  (logit > 0, i.e. probability > 0.5, against the label); unit: samples (user-item pairs).
- sequence (GNMT): x is N x (S + T) int64, the source tokens and then the decoder's input (the
  target shifted right behind a begin token: teacher forcing), y is N x T int64, the target
  tokens, padded with PAD_ID; loss: cross-entropy averaged over the non-pad target tokens;
  metric: token accuracy over the same tokens; unit: tokens (non-pad target tokens).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from twinbench.errors import InvalidArgument
from twinbench.models.id_models import GNMT, NeuMF
from twinbench.models.spec import ModelSpec
from twinbench.serving.repository import INPUT_NAME, InputSpec

PAD_ID = 0  # the padding token of GNMT's sequences; the loss and the metrics skip it
BOS_ID = 1  # begins the decoder's input
FIRST_TOKEN = 2  # tokens proper are 2 .. vocab - 1
# Logits held at once while evaluating a sequence model (rows x length x vocabulary floats).
EVAL_LOGITS = 1 << 24

Predict = Callable[[np.ndarray], np.ndarray]  # a session's predict: prepared rows -> logits


@dataclass(frozen=True)
class Evaluation:
    loss: float
    accuracy: float
    predicted: np.ndarray | None  # classification: the predicted class of each row


def cross_entropy(logits: np.ndarray, labels: np.ndarray) -> float:
    """Mean cross-entropy of logits, computed the same way for both frameworks' evaluations."""
    return float(_token_losses(logits, labels).mean())


def _token_losses(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64)
    z -= z.max(axis=-1, keepdims=True)
    log_probs = z - np.log(np.exp(z).sum(axis=-1, keepdims=True))
    return -np.take_along_axis(log_probs, labels[..., None], axis=-1)[..., 0]


def binary_cross_entropy(logits: np.ndarray, labels: np.ndarray) -> float:
    """Mean binary cross-entropy of logits, in the numerically stable form both frameworks use."""
    z = logits.astype(np.float64).reshape(-1)
    y = labels.astype(np.float64).reshape(-1)
    return float(np.mean(np.maximum(z, 0) - z * y + np.log1p(np.exp(-np.abs(z)))))


class Task:
    kind: str
    unit: str  # of throughput
    loss: str  # how the loss is computed, for the job's fairness map
    metric: str  # what `accuracy` means for this task
    inputs: tuple[InputSpec, ...]
    output_shape: tuple[int, ...]  # one row's logits

    def split(self, x: np.ndarray) -> list[np.ndarray]:
        """The model's input tensors for rows of a split's x."""
        return [x]

    def units(self, y: np.ndarray) -> int:
        """How many units of throughput (and of the mean loss) rows with labels `y` hold."""
        return len(y)

    def evaluate(self, predict: Predict, x: np.ndarray, y: np.ndarray) -> Evaluation:
        raise NotImplementedError


class Classification(Task):
    kind, unit = "classification", "images"
    loss = "mean cross-entropy on logits (the models output logits)"
    metric = "accuracy"

    def __init__(self, model: ModelSpec) -> None:
        self.inputs = (InputSpec(INPUT_NAME, "FP32", tuple(model.input_shape)),)
        self.output_shape = (model.num_classes,)

    def evaluate(self, predict: Predict, x: np.ndarray, y: np.ndarray) -> Evaluation:
        logits = predict(x)
        predicted = logits.argmax(axis=1)
        return Evaluation(cross_entropy(logits, y), float((predicted == y).mean()), predicted)


class Ranking(Task):
    kind, unit = "ranking", "samples"
    loss = (
        "mean binary cross-entropy on the logit (torch binary_cross_entropy_with_logits,"
        " reduction 'mean'; Keras BinaryCrossentropy(from_logits=True), 'sum_over_batch_size')"
    )
    metric = "binary accuracy (logit > 0 against the label)"

    def __init__(self, model: NeuMF) -> None:
        self.inputs = (
            InputSpec("user", "INT64", (), model.users),
            InputSpec("item", "INT64", (), model.items),
        )
        self.output_shape = (1,)

    def split(self, x: np.ndarray) -> list[np.ndarray]:
        return [np.ascontiguousarray(x[:, 0]), np.ascontiguousarray(x[:, 1])]

    def evaluate(self, predict: Predict, x: np.ndarray, y: np.ndarray) -> Evaluation:
        logits = predict(x).reshape(-1)
        accuracy = float(((logits > 0) == (y == 1)).mean())
        return Evaluation(binary_cross_entropy(logits, y), accuracy, None)


class Sequence(Task):
    kind, unit = "sequence", "tokens"
    loss = (
        "cross-entropy on logits averaged over the non-pad target tokens (torch cross_entropy"
        " with ignore_index, reduction 'mean'; Keras SparseCategoricalCrossentropy(from_logits"
        "=True, ignore_class), 'sum_over_batch_size' over the unmasked tokens)"
    )
    metric = "token accuracy over the non-pad target tokens"

    def __init__(self, model: GNMT) -> None:
        self.source_length = model.source_length
        self.inputs = (
            InputSpec("source", "INT64", (model.source_length,), model.vocab),
            InputSpec("target", "INT64", (model.target_length,), model.vocab),
        )
        self.output_shape = (model.target_length, model.vocab)

    def split(self, x: np.ndarray) -> list[np.ndarray]:
        s = self.source_length
        return [np.ascontiguousarray(x[:, :s]), np.ascontiguousarray(x[:, s:])]

    def units(self, y: np.ndarray) -> int:
        return int(np.count_nonzero(y != PAD_ID))

    def evaluate(self, predict: Predict, x: np.ndarray, y: np.ndarray) -> Evaluation:
        rows = max(1, EVAL_LOGITS // int(np.prod(self.output_shape)))
        loss_sum, hits, tokens = 0.0, 0, 0
        for start in range(0, len(y), rows):
            logits, labels = predict(x[start : start + rows]), y[start : start + rows]
            mask = labels != PAD_ID
            loss_sum += float(_token_losses(logits, labels)[mask].sum())
            hits += int(np.count_nonzero((logits.argmax(axis=-1) == labels) & mask))
            tokens += int(np.count_nonzero(mask))
        return Evaluation(loss_sum / max(tokens, 1), hits / max(tokens, 1), None)


Model = ModelSpec | NeuMF | GNMT


def task_for(model: Model) -> Task:
    if isinstance(model, NeuMF):
        return Ranking(model)
    if isinstance(model, GNMT):
        return Sequence(model)
    return Classification(model)


def check_inputs(task: Task, x: np.ndarray, dataset: str, model: str) -> None:
    """Refuses a dataset whose rows do not fit the model (a wrong shape, or ids out of range)."""
    if task.kind == "classification":
        shape = task.inputs[0].shape
        if tuple(x.shape[1:]) != shape:
            raise InvalidArgument(
                f"model {model} takes {shape}, dataset {dataset} has {x.shape[1:]}"
            )
        return
    for spec, tensor in zip(task.inputs, task.split(x), strict=True):
        if tuple(tensor.shape[1:]) != spec.shape:
            raise InvalidArgument(
                f"model {model} takes {spec.name} of shape {list(spec.shape)} per row,"
                f" dataset {dataset} has {list(tensor.shape[1:])}"
            )
        if len(tensor) and (tensor.min() < 0 or tensor.max() >= spec.id_limit):
            raise InvalidArgument(
                f"dataset {dataset} has {spec.name} ids up to {int(tensor.max())}, model {model}"
                f" has {spec.id_limit} (0 .. {spec.id_limit - 1}); use a larger width"
            )
