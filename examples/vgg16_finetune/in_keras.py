"""Fine-tune the top of an ImageNet-pretrained VGG16 on cats and dogs in Keras."""

import argparse
from pathlib import Path

import keras
import numpy as np
from PIL import Image


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
weights = "imagenet"
if args.smoke:
    args.data, args.epochs, args.image_size, weights = args.out / "images", 1, 32, None
    make_tiny_folder(args.data)

size = (args.image_size, args.image_size)
train_ds, val_ds = keras.utils.image_dataset_from_directory(
    args.data, image_size=size, batch_size=16, validation_split=0.2, subset="both", seed=0
)
preprocess = keras.applications.vgg16.preprocess_input
train_ds = train_ds.map(lambda x, y: (preprocess(x), y))
val_ds = val_ds.map(lambda x, y: (preprocess(x), y))

base = keras.applications.VGG16(include_top=False, weights=weights, input_shape=(*size, 3))
base.trainable = False  # the convolutional base stays as pretrained
model = keras.Sequential(
    [
        keras.Input((*size, 3)),
        keras.layers.RandomFlip("horizontal"),
        base,
        keras.layers.Flatten(),
        keras.layers.Dense(256, activation="relu"),
        keras.layers.Dropout(0.5),
        keras.layers.Dense(2),
    ]
)
model.compile(
    optimizer=keras.optimizers.Adam(0.0001),
    loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    metrics=["accuracy"],
)
model.fit(train_ds, validation_data=val_ds, epochs=args.epochs, verbose=2)

path = args.out / "vgg16_finetune.keras"
model.save(path)
model = keras.models.load_model(path)
images, labels = next(iter(val_ds))
predicted = int(model.predict(images[:1], verbose=0).argmax())
print(f"loaded {path}: predicted {predicted} for one image (label {labels[0]})")
