"""Fine-tune the top of an ImageNet-pretrained VGG16 on cats and dogs in JAX (Flax NNX, Optax).

Flax ships no pretrained VGG16: the convolutional base is written out here and its weights are
read from Keras's ImageNet file (HDF5, with h5py), whose kernels are already in Flax's layout.
"""

import argparse
import urllib.request
from pathlib import Path

import jax
import numpy as np
import optax
import orbax.checkpoint as ocp
from flax import nnx
from PIL import Image

BLOCKS = [[64, 64], [128, 128], [256, 256, 256], [512, 512, 512], [512, 512, 512]]
WEIGHTS_URL = (
    "https://storage.googleapis.com/tensorflow/keras-applications/vgg16/"
    "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"
)


def make_tiny_folder(root: Path) -> None:
    """A stand-in for the cats-and-dogs folder: a few random images per class."""
    rng = np.random.default_rng(0)
    for cls in ("cats", "dogs"):
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(12):
            pixels = rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / cls / f"{i}.png")


def load_folder(root: Path, size: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Every image of a one-folder-per-class tree, resized, in VGG16's input form (BGR, centred)."""
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    images, labels = [], []
    for label, cls in enumerate(classes):
        for file in sorted((root / cls).iterdir()):
            image = Image.open(file).convert("RGB").resize((size, size), Image.BILINEAR)
            images.append(
                np.asarray(image, dtype="float32")[..., ::-1] - [103.939, 116.779, 123.68]
            )
            labels.append(label)
    return np.stack(images).astype("float32"), np.array(labels), classes


class VGG16FineTune(nnx.Module):
    def __init__(self, image_size: int, classes: int, rngs: nnx.Rngs):
        channels = [3] + [c for block in BLOCKS for c in block]
        self.base = nnx.List(
            [
                nnx.Conv(a, b, (3, 3), rngs=rngs)
                for a, b in zip(channels[:-1], channels[1:], strict=True)
            ]
        )
        self.head1 = nnx.Linear(512 * (image_size // 32) ** 2, 256, rngs=rngs)
        self.dropout = nnx.Dropout(0.5, rngs=rngs)
        self.head2 = nnx.Linear(256, classes, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:  # x: (batch, height, width, channels)
        convs = iter(self.base)
        for block in BLOCKS:
            for _ in block:
                x = nnx.relu(next(convs)(x))
            x = nnx.max_pool(x, (2, 2), strides=(2, 2))
        x = x.reshape(x.shape[0], -1)
        return self.head2(self.dropout(nnx.relu(self.head1(x))))

    def load_imagenet_base(self, path: Path) -> None:
        import h5py

        names = [
            f"block{b}_conv{c}"
            for b, block in enumerate(BLOCKS, 1)
            for c in range(1, len(block) + 1)
        ]
        with h5py.File(path) as weights:
            for conv, name in zip(self.base, names, strict=True):
                kernel, bias = (weights[name][w][()] for w in weights[name].attrs["weight_names"])
                conv.kernel.value, conv.bias.value = kernel, bias


parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("--data", type=Path, default=Path("cats_and_dogs"), help="one folder per class")
parser.add_argument("--epochs", type=int, default=5)
parser.add_argument("--image-size", type=int, default=224)
parser.add_argument("--smoke", action="store_true", help="random weights, tiny images, one epoch")
parser.add_argument("--out", type=Path, default=Path("."))
args = parser.parse_args()
args.out.mkdir(parents=True, exist_ok=True)
pretrained = not args.smoke
if args.smoke:
    args.data, args.epochs, args.image_size = args.out / "images", 1, 32
    make_tiny_folder(args.data)

images, labels, classes = load_folder(args.data, args.image_size)
rng = np.random.default_rng(0)
order = rng.permutation(len(labels))
n_val = len(order) // 5
(x_val, y_val), (x_train, y_train) = [(images[i], labels[i]) for i in np.split(order, [n_val])]

model = VGG16FineTune(args.image_size, len(classes), nnx.Rngs(0))
if pretrained:
    weights = Path("data") / WEIGHTS_URL.rsplit("/", 1)[1]
    if not weights.exists():  # fetched once into ./data
        weights.parent.mkdir(exist_ok=True)
        urllib.request.urlretrieve(WEIGHTS_URL, weights)
    model.load_imagenet_base(weights)
head = nnx.All(nnx.Param, nnx.Any(*(nnx.PathContains(n) for n in ("head1", "head2"))))
optimizer = nnx.Optimizer(model, optax.adam(0.0001), wrt=head)  # the base stays as pretrained


def loss_fn(model: VGG16FineTune, images: jax.Array, labels: jax.Array) -> jax.Array:
    logits = model(images)
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


@nnx.jit
def train_step(model: VGG16FineTune, optimizer: nnx.Optimizer, images, labels) -> jax.Array:
    loss, grads = nnx.value_and_grad(loss_fn, argnums=nnx.DiffState(0, head))(model, images, labels)
    optimizer.update(model, grads)
    return loss


@nnx.jit
def predict(model: VGG16FineTune, images: jax.Array) -> jax.Array:
    return model(images).argmax(-1)


for epoch in range(1, args.epochs + 1):
    model.train()  # dropout on
    # equal batches of at most 16 (10 and 10 rather than 16 and 4): one shape, one compilation
    for batch in np.array_split(rng.permutation(len(y_train)), -(-len(y_train) // 16)):
        flip = rng.random(len(batch)) < 0.5  # a random horizontal flip for half the images
        batch_images = np.where(flip[:, None, None, None], x_train[batch, :, ::-1], x_train[batch])
        loss = train_step(model, optimizer, batch_images, y_train[batch])
    model.eval()
    accuracy = float((predict(model, x_val) == y_val).mean())
    print(f"epoch {epoch} loss {float(loss):.4f} val accuracy {accuracy:.4f}")

path = (args.out / "vgg16_finetune").absolute()  # Orbax writes a checkpoint folder
checkpointer = ocp.StandardCheckpointer()
checkpointer.save(path, nnx.state(model), force=True)
checkpointer.wait_until_finished()
abstract = nnx.eval_shape(lambda: VGG16FineTune(args.image_size, len(classes), nnx.Rngs(0)))
graphdef, abstract_state = nnx.split(abstract)
model = nnx.merge(graphdef, checkpointer.restore(path, abstract_state))
model.eval()
predicted = int(predict(model, x_val[:1])[0])
print(f"loaded {path}: predicted {predicted} for one image (label {y_val[0]})")
