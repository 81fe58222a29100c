"""Fine-tune the top of an ImageNet-pretrained VGG16 on cats and dogs in PyTorch."""

import argparse
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, random_split
from torchvision import datasets, models, transforms


def make_tiny_folder(root: Path) -> None:
    """A stand-in for the cats-and-dogs folder: a few random images per class."""
    rng = np.random.default_rng(0)
    for cls in ("cats", "dogs"):
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(12):
            pixels = rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / cls / f"{i}.png")


parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("--data", type=Path, default=Path("cats_and_dogs"), help="one folder per class")
parser.add_argument("--epochs", type=int, default=5)
parser.add_argument("--image-size", type=int, default=224)
parser.add_argument("--smoke", action="store_true", help="random weights, tiny images, one epoch")
parser.add_argument("--out", type=Path, default=Path("."))
args = parser.parse_args()
args.out.mkdir(parents=True, exist_ok=True)
weights = models.VGG16_Weights.IMAGENET1K_V1
if args.smoke:
    args.data, args.epochs, args.image_size, weights = args.out / "images", 1, 32, None
    make_tiny_folder(args.data)

normalize = transforms.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])
train_transform = transforms.Compose(
    [
        transforms.Resize((args.image_size, args.image_size)),
        transforms.RandomHorizontalFlip(),
        transforms.ToTensor(),
        normalize,
    ]
)
data = datasets.ImageFolder(args.data, transform=train_transform)
n_val = len(data) // 5
train_set, val_set = random_split(data, [len(data) - n_val, n_val])
train_loader = DataLoader(train_set, batch_size=16, shuffle=True)
val_loader = DataLoader(val_set, batch_size=16)

model = models.vgg16(weights=weights)
for parameter in model.features.parameters():
    parameter.requires_grad = False  # the convolutional base stays as pretrained
model.classifier = nn.Sequential(
    nn.Linear(512 * 7 * 7, 256), nn.ReLU(), nn.Dropout(0.5), nn.Linear(256, len(data.classes))
)
optimizer = torch.optim.Adam(model.classifier.parameters(), lr=0.0001)
loss_fn = nn.CrossEntropyLoss()

for epoch in range(1, args.epochs + 1):
    model.train()
    for images, labels in train_loader:
        loss = loss_fn(model(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        correct = sum((model(x).argmax(1) == y).sum().item() for x, y in val_loader)
    print(f"epoch {epoch} loss {loss.item():.4f} val accuracy {correct / len(val_set):.4f}")

path = args.out / "vgg16_finetune.pt"
torch.save(model, path)
model = torch.load(path, weights_only=False)
model.eval()
image, label = val_set[0]
with torch.no_grad():
    predicted = model(image.unsqueeze(0)).argmax(1).item()
print(f"loaded {path}: predicted {predicted} for one image (label {label})")
