"""A model declared once, as data (`ModelSpec`): its layers, its training defaults, and what a
reinforcement or fine-tuning job or a sweep adds to it; the trainers build their framework's model
from it."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace

from twinbench.errors import InvalidArgument
from twinbench.models.layers import (
    ACTIVATIONS,
    WEIGHTED,
    Dense,
    Layer,
    Pool,
    Residual,
    Shape,
    output_shape,
    sequence_shape,
    trainable_size,
)


@dataclass(frozen=True)
class Augment:
    """Per-step training augmentation, the same semantics in both frameworks.

    horizontal_flip: mirror left-right with probability 0.5 (never vertical).
    rotation_degrees: rotate by a uniform angle in [-d, +d] degrees, nearest-neighbour
    interpolation, zeros outside the image (Keras takes this as factor d/360).
    """

    horizontal_flip: bool = False
    rotation_degrees: float = 0.0


@dataclass(frozen=True)
class TrainDefaults:
    optimizer: str
    learning_rate: float
    batch_size: int
    epochs: int
    momentum: float = 0.0
    epsilon: float = 1e-8  # PyTorch's Adam default, set in Keras too (its own is 1e-7)
    dataset: str = "mnist-5k"


@dataclass(frozen=True)
class FloatRange:
    low: float
    high: float
    log: bool = False  # sampled evenly in log space: learning rates span orders of magnitude


@dataclass(frozen=True)
class IntRange:
    low: int
    high: int


@dataclass(frozen=True)
class Choice:
    values: tuple[int, ...]


Range = FloatRange | IntRange | Choice


@dataclass(frozen=True)
class DQN:
    """A deep Q-learning job: what the shared loop (twinbench/training/rl.py) does around the Q-network.

    The same in both frameworks by construction: the loop, the replay buffer, the epsilon
    schedule, the environment's seeds and the TD targets are shared code; each framework only
    runs the network (a forward pass, one optimizer step on the Huber loss, the target copy).
    """

    environment: str = "CartPole-v1"
    # The schedule of RL Baselines3 Zoo's tuned DQN for CartPole-v1: 256 steps of acting, then
    # 128 optimizer steps against a target network copied just before them. Its learning rate
    # (0.0023) learned worse here than 0.0005, the model's default (see README).
    env_steps: int = 200_000  # the budget: the job stops there, or once solved
    gamma: float = 0.99
    buffer_size: int = 100_000
    learning_starts: int = 1_000  # random steps that fill the buffer before any update
    train_every: int = 256  # environment steps between bursts of optimizer steps
    gradient_steps: int = 128  # optimizer steps per burst
    epsilon_start: float = 1.0
    epsilon_end: float = 0.04
    epsilon_steps: int = 8_000  # linear decay from start to end over these steps
    target_update_steps: int = 256  # hard copy of the online network into the target network
    double: bool = False  # Double DQN targets (twinbench.training.rl.td_targets); off, as tuned
    grad_clip_norm: float = 10.0  # the global norm gradients are clipped to, in both
    # Solved: the greedy policy's mean reward over `solve_window` evaluation episodes reaches
    # this (CartPole-v1's reward threshold as Gymnasium registers it: 475 over 100 consecutive
    # trials). Evaluated (twinbench.training.rl.evaluate_greedy) once the mean of the last
    # `evaluation_gate` training episodes reaches the threshold, at most once per burst.
    solve_threshold: float = 475.0
    solve_window: int = 100
    evaluation_gate: int = 10
    max_episode_reward: float = 500.0  # CartPole-v1: 1 per step, cut at 500 steps
    actions: tuple[str, ...] = ("push left", "push right")


# What a search may set, by name: the JobSpec fields of training, and `units_<i>`, the units of the
# i-th hidden dense layer (1-based), which change the declared model itself.
SEARCHABLE = ("learning_rate", "momentum", "batch_size", "epochs")


@dataclass(frozen=True)
class Pretrained:
    """A fine-tuning job's base: its first `frozen_layers` weighted layers start from a
    torchvision state_dict file (twinbench/data/pretrained.py) and are never trained."""

    download: str  # what `twinbench data download` calls the file's source
    filename: str
    frozen_layers: int
    prefix: str = "features"  # the base's name in torchvision's state_dict
    # torchvision's preprocessing of ImageNet inputs, applied to the data in shared code
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ModelSpec:
    name: str
    description: str
    input_shape: tuple[int, ...]  # C, H, W; or (features,) for a vector input
    layers: tuple[Layer, ...]
    defaults: TrainDefaults
    augment: Augment | None = None
    # A reinforcement-learning job (the network is its Q-network); None: supervised.
    reinforcement: DQN | None = None
    # A fine-tuning job (a frozen pretrained base, a new top); None: trained from scratch.
    pretrained: Pretrained | None = None
    # A hyperparameter search's space (`twinbench sweep`); None: the model declares none.
    search_space: dict[str, Range] | None = field(default=None, hash=False)

    def __post_init__(self) -> None:
        for _, _, after in self.walk():
            if min(after) < 1:
                _, h, w = self.input_shape
                raise InvalidArgument(
                    f"model {self.name}: an input of {h}x{w} shrinks to nothing ({after});"
                    " use a larger image size"
                )
        _check_padded_max_pools(self.layers)

    @property
    def num_classes(self) -> int:
        last = self.layers[-1]
        assert isinstance(last, Dense)  # every declaration ends in its output layer
        return last.units

    @property
    def kind(self) -> str:
        """The job's kind: "supervised", "reinforcement" or "fine-tuning"."""
        if self.reinforcement:
            return "reinforcement"
        return "fine-tuning" if self.pretrained else "supervised"

    def hidden_units(self) -> tuple[int, ...]:
        """Units of every dense layer but the output, in order."""
        return tuple(layer.units for layer in self.layers[:-1] if isinstance(layer, Dense))

    def with_hidden_units(self, units: Sequence[int]) -> ModelSpec:
        """The same declaration with other hidden dense widths; empty `units` keeps it as is.

        Both frameworks build from the returned declaration, so the parity check's weight
        mapping and the shared init apply to it unchanged."""
        units = tuple(units)
        if not units or units == self.hidden_units():
            return self
        hidden = self.hidden_units()
        if len(units) != len(hidden):
            raise InvalidArgument(
                f"{self.name} has {len(hidden)} hidden dense layers ({'-'.join(map(str, hidden))});"
                f" hidden_units gave {len(units)}"
            )
        if not all(1 <= u <= 65_536 for u in units):
            raise InvalidArgument(f"hidden_units must each be 1..65536, got {list(units)}")
        widths = iter(units)
        layers = tuple(
            replace(layer, units=next(widths))
            if isinstance(layer, Dense) and i < len(self.layers) - 1
            else layer
            for i, layer in enumerate(self.layers)
        )
        return replace(
            self, layers=layers, description=f"{self.description} (hidden units {list(units)})"
        )

    def shapes(self) -> list[Shape]:
        """The output shape (C, H, W or features) after each top-level layer."""
        shape: Shape = self.input_shape
        out = []
        for layer in self.layers:
            shape = output_shape(layer, shape)
            out.append(shape)
        return out

    def walk(self) -> Iterator[tuple[Layer, Shape, Shape]]:
        """Every layer but the Residual containers, with its input and output shapes, in
        declaration order (a block's body before its shortcut): the order of the weights."""
        yield from _walk(self.layers, self.input_shape)

    def weighted(self) -> list[tuple[Layer, Shape]]:
        """The layers with weights and their input shapes, in the order of the weights."""
        return [(layer, shape) for layer, shape, _ in self.walk() if isinstance(layer, WEIGHTED)]

    def parameter_count(self) -> int:
        """Trainable parameters (batch norm's running statistics are not)."""
        return sum(trainable_size(layer, shape) for layer, shape in self.weighted())


def _walk(layers: tuple[Layer, ...], shape: Shape) -> Iterator[tuple[Layer, Shape, Shape]]:
    for layer in layers:
        after = output_shape(layer, shape)
        if isinstance(layer, Residual):
            yield from _walk(layer.body, shape)
            yield from _walk(layer.shortcut, shape)
            shortcut = sequence_shape(layer.shortcut, shape)
            if shortcut != after:
                raise InvalidArgument(f"a residual block adds {after} to {shortcut}")
        else:
            yield layer, shape, after
        shape = after


def _check_padded_max_pools(layers: tuple[Layer, ...]) -> None:
    previous: Layer | None = None
    for layer in layers:
        if isinstance(layer, Residual):
            _check_padded_max_pools(layer.body)
            _check_padded_max_pools(layer.shortcut)
        if isinstance(layer, Pool) and layer.kind == "max" and layer.padding:
            if getattr(previous, "activation", None) not in ACTIVATIONS:
                raise ValueError("a padded max pool must follow a ReLU (zero padding == -inf)")
        previous = layer
