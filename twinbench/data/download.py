"""`twinbench data download NAME`: fetches a dataset's files, or pretrained weights, resumably,
checked by sha256."""

from __future__ import annotations

import hashlib
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from twinbench.errors import Unavailable


@dataclass(frozen=True)
class Source:
    base_url: str
    sha256: dict[str, str]  # file name -> checksum of the file as downloaded


SOURCES = {
    "mnist": Source(
        "https://storage.googleapis.com/cvdf-datasets/mnist/",
        {
            "train-images-idx3-ubyte.gz": "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
            "train-labels-idx1-ubyte.gz": "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
            "t10k-images-idx3-ubyte.gz": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
            "t10k-labels-idx1-ubyte.gz": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
        },
    ),
    "fashion-mnist": Source(
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        {
            "train-images-idx3-ubyte.gz": "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
            "train-labels-idx1-ubyte.gz": "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
            "t10k-images-idx3-ubyte.gz": "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
            "t10k-labels-idx1-ubyte.gz": "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
        },
    ),
    # MovieLens (GroupLens, University of Minnesota), read whole from the zip: ml-20m is the one
    # MLPerf's NCF trains on (190 MiB), ml-1m a small one (5.6 MiB).
    "ml-20m": Source(
        "https://files.grouplens.org/datasets/movielens/",
        {"ml-20m.zip": "96f243c338a8665f6bcc89c53edf6ee39162a846940de6b7c8c48aeada765ff3"},
    ),
    "ml-1m": Source(
        "https://files.grouplens.org/datasets/movielens/",
        {"ml-1m.zip": "a6898adb50b9ca05aa231689da44c217cb524e7ebd39d264c56e2832f2c54e20"},
    ),
    # torchvision's ImageNet weights of VGG16 (VGG16_Weights.IMAGENET1K_V1), the pretrained base
    # of vgg16_finetune; the name's 397923af is the start of this checksum, as torchvision names
    # its files.
    "vgg16-weights": Source(
        "https://download.pytorch.org/models/",
        {"vgg16-397923af.pth": "397923af8e79cdbb6a7127f12361acd7a2f83e06b05044ddf496e83de57a5bf0"},
    ),
}


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def download(
    name: str, data_root: Path, source: Source | None = None, timeout_s: float = 60
) -> list[str]:
    """Fetches every missing or damaged file into data_root/name; returns what it did, per file.

    A partial download is kept as <file>.part and resumed with an HTTP Range request; a file
    is renamed into place only once its checksum matches.
    """
    source = source or SOURCES[name]
    folder = data_root / name
    folder.mkdir(parents=True, exist_ok=True)
    report = []
    for filename, expected in source.sha256.items():
        target = folder / filename
        if target.exists() and sha256_file(target) == expected:
            report.append(f"{filename}: present, checksum ok")
            continue
        part = target.with_name(target.name + ".part")
        resumed = _fetch(source.base_url + filename, part, timeout_s)
        actual = sha256_file(part)
        if actual != expected:
            part.unlink()
            raise Unavailable(
                f"{filename}: sha256 {actual} does not match the expected {expected}; "
                "the partial file was removed, run the command again"
            )
        part.replace(target)
        report.append(f"{filename}: downloaded{' (resumed)' if resumed else ''}, checksum ok")
    return report


def _fetch(url: str, part: Path, timeout_s: float) -> bool:
    """Appends the rest of `url` to `part`; True when it resumed an earlier partial download."""
    offset = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={offset}-"} if offset else {})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            resumed = offset > 0 and response.status == 206
            with part.open("ab" if resumed else "wb") as out:
                for chunk in iter(lambda: response.read(1 << 20), b""):
                    out.write(chunk)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:  # the partial file is already whole
            return True
        raise Unavailable(f"{url}: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise Unavailable(
            f"cannot download {url} ({reason}). Offline? Copy the files into {part.parent} by "
            "hand; they are checked by sha256, and a partial file resumes on the next try"
        ) from None
    return resumed
