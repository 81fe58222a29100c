"""PyTorch models built from the declarations, and their weights in twinbench's canonical layout."""

from __future__ import annotations

import torch
from torch import nn

from twinbench.models.id_models import GNMT, NeuMF
from twinbench.models.initial_weights import Weights
from twinbench.models.layers import (
    BatchNorm,
    Conv,
    Dense,
    DepthwiseConv,
    Dropout,
    Flatten,
    GlobalAvgPool,
    Layer,
    Pool,
    Residual,
    conv_padding,
    output_shape,
)
from twinbench.models.spec import ModelSpec

_ACTIVATIONS = {"relu": nn.ReLU, "relu6": nn.ReLU6}

# The modules that hold a spec's weighted layers (see twinbench.models.initial_weights).
Weighted = nn.Conv2d | nn.Linear | nn.BatchNorm2d
# The modules that hold an id-input model's weights.
IdWeighted = nn.Embedding | nn.Linear | nn.LSTM


class ResidualBlock(nn.Module):
    """activation(body(x) + shortcut(x)); an empty shortcut passes x through."""

    def __init__(self, body: nn.Sequential, shortcut: nn.Sequential, activation: str | None):
        super().__init__()
        # Registered body first, then shortcut: modules() then visits the weights in the
        # spec's declaration order.
        self.body = body
        self.shortcut = shortcut
        self.activation = _ACTIVATIONS[activation]() if activation else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activation(self.body(x) + self.shortcut(x))


def _build(layers: tuple[Layer, ...], shape: tuple[int, ...]) -> nn.Sequential:
    modules: list[nn.Module] = []
    for layer in layers:
        after = output_shape(layer, shape)
        if isinstance(layer, Conv):
            modules.append(
                nn.Conv2d(
                    shape[0],
                    layer.filters,
                    layer.kernel,
                    stride=layer.stride,
                    padding=conv_padding(layer),
                    bias=layer.bias,
                )
            )
        elif isinstance(layer, DepthwiseConv):
            c = shape[0]
            modules.append(
                nn.Conv2d(
                    c, c, layer.kernel, layer.stride, layer.padding, groups=c, bias=layer.bias
                )
            )
        elif isinstance(layer, BatchNorm):
            modules.append(nn.BatchNorm2d(shape[0], eps=layer.epsilon, momentum=layer.momentum))
        elif isinstance(layer, Pool):
            pool = nn.AvgPool2d if layer.kind == "avg" else nn.MaxPool2d
            modules.append(pool(layer.size, layer.stride or layer.size, layer.padding))
        elif isinstance(layer, GlobalAvgPool):
            modules += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        elif isinstance(layer, Flatten):
            modules.append(nn.Flatten())
        elif isinstance(layer, Dropout):
            modules.append(nn.Dropout(layer.rate))
        elif isinstance(layer, Dense):
            modules.append(nn.Linear(shape[0], layer.units))
        elif isinstance(layer, Residual):
            body, shortcut = _build(layer.body, shape), _build(layer.shortcut, shape)
            modules.append(ResidualBlock(body, shortcut, layer.activation))
        activation = getattr(layer, "activation", None)
        if activation is not None and not isinstance(layer, Residual):
            modules.append(_ACTIVATIONS[activation]())
        shape = after
    return nn.Sequential(*modules)


def build_model(spec: ModelSpec) -> nn.Sequential:
    return _build(spec.layers, spec.input_shape)


def weighted_modules(model: nn.Module) -> list[Weighted]:
    return [m for m in model.modules() if isinstance(m, Weighted)]


def _arrays(module: Weighted) -> list[torch.Tensor]:
    """A weighted module's tensors in twinbench's canonical order (see
    twinbench.models.initial_weights)."""
    if isinstance(module, nn.BatchNorm2d):
        # Declared optional for track_running_stats=False, which the builder never sets.
        assert module.running_mean is not None and module.running_var is not None
        return [module.weight, module.bias, module.running_mean, module.running_var]
    return [module.weight] if module.bias is None else [module.weight, module.bias]


def model_weights(model: nn.Module) -> Weights:
    """The weights in twinbench's canonical layout, which is PyTorch's."""
    return [tuple(t.detach().cpu().numpy() for t in _arrays(m)) for m in weighted_modules(model)]


def load_base(model: nn.Module, weights: Weights, freeze: bool = False) -> None:
    """The first len(weights) weighted layers from `weights` (a pretrained base); frozen: never
    trained (no gradients, so no optimizer touches them)."""
    with torch.no_grad():
        for module, arrays in zip(weighted_modules(model), weights, strict=False):
            for tensor, array in zip(_arrays(module), arrays, strict=True):
                tensor.copy_(torch.from_numpy(array))
            if freeze:
                module.requires_grad_(False)


def load_weights(model: nn.Module, weights: Weights) -> None:
    with torch.no_grad():
        for module, arrays in zip(weighted_modules(model), weights, strict=True):
            for tensor, array in zip(_arrays(module), arrays, strict=True):
                tensor.copy_(torch.from_numpy(array))


class TorchNeuMF(nn.Module):
    def __init__(self, m: NeuMF) -> None:
        super().__init__()
        # Registration order is the canonical weight order (see
        # twinbench.models.initial_weights.keras_id_arrays).
        self.gmf_user = nn.Embedding(m.users, m.factors)
        self.gmf_item = nn.Embedding(m.items, m.factors)
        self.mlp_user = nn.Embedding(m.users, m.mlp[0] // 2)
        self.mlp_item = nn.Embedding(m.items, m.mlp[0] // 2)
        dense: list[nn.Module] = []
        for a, b in zip(m.mlp, m.mlp[1:]):  # noqa: B905
            dense += [nn.Linear(a, b), nn.ReLU()]
        self.mlp = nn.Sequential(*dense)
        self.out = nn.Linear(m.factors + m.mlp[-1], 1)

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        gmf = self.gmf_user(users) * self.gmf_item(items)
        mlp = self.mlp(torch.cat([self.mlp_user(users), self.mlp_item(items)], 1))
        return self.out(torch.cat([gmf, mlp], 1))  # one logit per (user, item)


def _lstm_stack(x: torch.Tensor, layers: nn.ModuleList) -> torch.Tensor:
    for i, lstm in enumerate(layers):
        y, _ = lstm(x)
        x = y + x if i >= 2 else y  # GNMT's residual connections, from the third layer on
    return x


class TorchGNMT(nn.Module):
    def __init__(self, m: GNMT) -> None:
        super().__init__()
        h = m.hidden
        self.source_embedding = nn.Embedding(m.vocab, h)
        self.encoder = nn.ModuleList(nn.LSTM(h, h, batch_first=True) for _ in range(m.layers))
        self.target_embedding = nn.Embedding(m.vocab, h)
        self.decoder = nn.ModuleList(nn.LSTM(h, h, batch_first=True) for _ in range(m.layers))
        self.attentional = nn.Linear(2 * h, h)
        self.classifier = nn.Linear(h, m.vocab)

    def forward(self, source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        memory = _lstm_stack(self.source_embedding(source), self.encoder)
        x = _lstm_stack(self.target_embedding(target), self.decoder)
        weights = torch.softmax(x @ memory.transpose(1, 2), dim=-1)  # dot-product attention
        h = torch.tanh(self.attentional(torch.cat([x, weights @ memory], -1)))
        return self.classifier(h)  # batch x target length x vocabulary


def build_id_model(m: NeuMF | GNMT) -> nn.Module:
    return TorchNeuMF(m) if isinstance(m, NeuMF) else TorchGNMT(m)


def _id_weighted(model: nn.Module) -> list[IdWeighted]:
    return [m for m in model.modules() if isinstance(m, IdWeighted)]


def id_model_weights(model: nn.Module) -> Weights:
    """Each Embedding, Linear and LSTM's tensors in registration order; an LSTM's are
    (weight_ih, weight_hh, bias_ih, bias_hh), gates in the order i, f, g, o."""
    return [tuple(p.detach().cpu().numpy() for p in m.parameters()) for m in _id_weighted(model)]


def load_id_weights(model: nn.Module, weights: Weights) -> None:
    """Loads weights in id_model_weights's layout and order."""
    with torch.no_grad():
        for module, arrays in zip(_id_weighted(model), weights, strict=True):
            for tensor, array in zip(module.parameters(), arrays, strict=True):
                tensor.copy_(torch.from_numpy(array))
