"""The models that take integer ids rather than images: NCF (NeuMF) and a GNMT-style translation
model, declared as data like the others."""

from __future__ import annotations

from dataclasses import dataclass, replace

from twinbench.errors import InvalidArgument
from twinbench.models.spec import TrainDefaults


@dataclass(frozen=True)
class NeuMF:
    """Neural matrix factorisation (He et al., 2017): a GMF branch (user and item embeddings
    multiplied elementwise) beside an MLP branch (the two embeddings concatenated, then dense
    ReLU layers), concatenated into one logit: does the user interact with the item."""

    name: str
    users: int
    items: int
    factors: int = 64  # GMF embedding size
    mlp: tuple[int, ...] = (256, 256, 128, 64)  # mlp[0] is both MLP embeddings concatenated

    def parameter_count(self) -> int:
        ids = self.users + self.items
        dense = sum((a + 1) * b for a, b in zip(self.mlp, self.mlp[1:]))  # noqa: B905
        return ids * self.factors + ids * self.mlp[0] // 2 + dense + self.factors + self.mlp[-1] + 1

    @property
    def defaults(self) -> TrainDefaults:
        # The NCF paper's settings (He et al., 2017): Adam, learning rate 0.001, batch 256.
        return TrainDefaults("adam", 0.001, 256, 1, dataset="synthetic")


@dataclass(frozen=True)
class GNMT:
    """A GNMT-style translation model, teacher-forced: token embeddings, a stack of LSTMs as the
    encoder, a stack of LSTMs as the decoder (both with residual connections from the third layer
    on, as GNMT), dot-product attention of the decoder's top layer over the encoder's outputs,
    Luong's attentional layer tanh(W [output, context]), and a dense layer to the vocabulary."""

    name: str
    vocab: int = 32320  # GNMT v2's shared BPE vocabulary (MLPerf's WMT16 en-de)
    hidden: int = 1024
    layers: int = 4  # in the encoder and in the decoder each
    source_length: int = 50
    target_length: int = 50

    def lstm_count(self, biases: int) -> int:
        """One LSTM layer's parameters; PyTorch keeps two bias vectors, Keras one."""
        h = self.hidden
        return 4 * h * (2 * h) + biases * 4 * h

    def parameter_count(self, lstm_biases: int = 2) -> int:
        """PyTorch's count by default; Keras's has one bias vector per LSTM layer fewer."""
        h = self.hidden
        embeddings = 2 * self.vocab * h
        attentional = (2 * h + 1) * h
        classifier = (h + 1) * self.vocab
        return (
            embeddings + 2 * self.layers * self.lstm_count(lstm_biases) + attentional + classifier
        )

    @property
    def defaults(self) -> TrainDefaults:
        # MLPerf's GNMT reference: Adam, learning rate 0.002, batch 128.
        return TrainDefaults("adam", 0.002, 128, 1, dataset="synthetic")


ID_MODELS: dict[str, NeuMF | GNMT] = {
    # MLPerf's NCF on MovieLens-20M: 138,493 users, 26,744 items, factors 64, MLP 256-256-128-64.
    "ncf": NeuMF("ncf", users=138_493, items=26_744),
    "gnmt": GNMT("gnmt"),
}


def id_model(name: str, scale: float = 1.0) -> NeuMF | GNMT:
    """An id-input model, its widths and vocabulary (or user and item counts) times `scale`."""
    if name not in ID_MODELS:
        raise InvalidArgument(f"unknown model {name!r}; known: {', '.join(ID_MODELS)}")
    if not 0 < scale <= 1:
        raise InvalidArgument(f"scale must be in (0, 1], got {scale:g}")
    model = ID_MODELS[name]
    if scale == 1:
        return model
    s = lambda n: max(2, round(n * scale))  # noqa: E731
    if isinstance(model, NeuMF):
        mlp = tuple(2 * s(n // 2) for n in model.mlp)
        return replace(
            model, users=s(model.users), items=s(model.items), factors=s(model.factors), mlp=mlp
        )
    return replace(model, vocab=s(model.vocab), hidden=s(model.hidden))
