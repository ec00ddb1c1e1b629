"""CIFAR-10/100 from any of three on-disk forms, decoded once and cached as uint8 arrays.

Forms looked for under the data root, in this order:

1. npz of JPEG bytes: ``<root>/cifar10/{train,test}.npz`` (keys ``jpeg``, ``offsets``, ``y``, ``class_names``);
2. the official "python version" pickles: ``<root>/cifar-10-batches-py`` / ``<root>/cifar-100-python``
   (read with a restricted unpickler that cannot execute code);
3. class folders of images: ``<root>/cifar10/{train,test}/<class>/*.png|jpg``.
"""

from __future__ import annotations

import hashlib
import io
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from lakd.atomic import atomic_write
from lakd.data.root import decoded_cache_dir
from lakd.errors import LakdError

CIFAR_NAMES = ("cifar10", "cifar100")
PICKLE_FOLDERS = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}
CACHE_VERSION = 2  # 2: content digests of source and arrays


@dataclass
class ImageArrays:
    """A decoded split: ``x`` uint8 (N, H, W, 3), ``y`` int64 (N,), class names."""

    x: np.ndarray
    y: np.ndarray
    classes: list[str]

    def __len__(self) -> int:
        return len(self.y)

    def subset(self, index: np.ndarray) -> ImageArrays:
        return ImageArrays(self.x[index], self.y[index], self.classes)

    @property
    def image_size(self) -> int:
        """Side of the (square) images the model sees; the streaming ``FileList`` has the same attribute."""
        return int(self.x.shape[1])


def decode_jpeg_npz(path: Path) -> ImageArrays:
    """Decode an npz of concatenated JPEG files (the shared offline CIFAR form)."""
    try:
        with np.load(path, allow_pickle=False) as d:
            missing = {"jpeg", "offsets", "y"} - set(d.files)
            if missing:
                raise LakdError(f"{path}: not an npz-of-JPEG file, missing keys {sorted(missing)}")
            buf, offsets, y = d["jpeg"], d["offsets"], d["y"]
            wrong = [f"'{k}' ({a.dtype}, {a.ndim}-d)" for k, a in (("jpeg", buf), ("offsets", offsets), ("y", y))
                     if a.ndim != 1 or not np.issubdtype(a.dtype, np.integer)]
            if wrong:
                raise LakdError(f"{path}: {', '.join(wrong)} must be 1-d integer arrays (JPEG bytes, their "
                                "offsets, labels); the file is corrupt or not an npz-of-JPEG file")
            y = y.astype(np.int64)
            classes = [str(c) for c in d["class_names"]] if "class_names" in d.files else []
    except LakdError:
        raise
    except Exception as exc:  # zipfile.BadZipFile, EOFError, ValueError on truncated files
        raise LakdError(f"{path}: cannot read npz ({type(exc).__name__}: {exc}); the file is corrupt or "
                        "truncated — delete it and fetch it again") from exc
    n = len(offsets) - 1
    if offsets.ndim != 1 or y.ndim != 1 or n != len(y) or n < 0 or offsets[-1] > len(buf):
        raise LakdError(f"{path}: offsets ({len(offsets)}) do not match labels ({len(y)}) or data size; "
                        "the file is corrupt")
    if n > 0 and (int(offsets[0]) < 0 or not bool(np.all(np.diff(offsets) > 0))):
        raise LakdError(f"{path}: offsets are not increasing from >= 0 (every image needs its own bytes); "
                        "the file is corrupt")
    if n > 0 and (int(y.min()) < 0 or (classes and int(y.max()) >= len(classes))):
        bad = int(y.min()) if int(y.min()) < 0 else int(y.max())
        raise LakdError(f"{path}: label {bad} is out of range for {len(classes) or 'the'} classes "
                        f"(labels must be 0..{len(classes) - 1 if classes else 'C-1'}); the file is corrupt")
    x = None
    for i in range(n):
        try:
            img = Image.open(io.BytesIO(buf[offsets[i]:offsets[i + 1]].tobytes()))
            arr = np.asarray(img.convert("RGB"))
        except Exception as exc:
            raise LakdError(f"{path}: image {i} does not decode ({exc}); the file is corrupt") from exc
        if x is None:
            x = np.empty((n, *arr.shape), dtype=np.uint8)
        if arr.shape != x.shape[1:]:
            raise LakdError(f"{path}: image {i} has shape {arr.shape}, expected {x.shape[1:]}")
        x[i] = arr
    if x is None:
        raise LakdError(f"{path}: holds no images")
    if not classes:
        classes = [str(c) for c in range(int(y.max()) + 1)]
    return ImageArrays(x, y, classes)


def _payload_digest(x: np.ndarray, y: np.ndarray, classes: list[str]) -> str:
    """Digest of the decoded arrays: a cache file is used only if its contents are what was written."""
    digest = hashlib.blake2b(digest_size=16)
    for part in (np.ascontiguousarray(x), np.ascontiguousarray(y.astype(np.int64))):
        digest.update(memoryview(part).cast("B"))
    digest.update("\x00".join(classes).encode())
    return digest.hexdigest()


def _save_cache(path: Path, arrays: ImageArrays, source_key: str) -> None:
    """Write the decoded cache atomically (temp file + rename), so a crash leaves no torn cache."""
    payload = _payload_digest(arrays.x, arrays.y, list(arrays.classes))
    atomic_write(path, lambda f: np.savez(f, x=arrays.x, y=arrays.y, classes=np.array(arrays.classes),
                                          source=np.array(source_key), payload=np.array(payload),
                                          version=np.array(CACHE_VERSION)))


def _load_cache(path: Path, source_key: str) -> ImageArrays | None:
    """The cached arrays, or None when absent, stale (the source's contents changed), not ours (its arrays do not
    match the digest written with them) or unreadable: then the source is decoded again."""
    if not path.is_file() or path.is_symlink():
        return None
    try:
        with np.load(path, allow_pickle=False) as d:
            if int(d["version"]) != CACHE_VERSION or str(d["source"]) != source_key:
                return None
            x, y, classes = d["x"], d["y"].astype(np.int64), [str(c) for c in d["classes"]]
            if str(d["payload"]) != _payload_digest(x, y, classes):
                return None
            return ImageArrays(x, y, classes)
    except Exception:
        return None


def _source_key(path: Path) -> str:
    """Where the source is and a digest of its contents (every file's bytes, for a folder): a source edited in
    place, even with its size and modification time kept, gets a new key."""
    digest = hashlib.blake2b(digest_size=16)
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for file in files:
        digest.update(str(file.relative_to(path) if file != path else file.name).encode() + b"\x00")
        with open(file, "rb") as f:
            for chunk in iter(lambda f=f: f.read(1 << 20), b""):
                digest.update(chunk)
    return f"{path.resolve()}|{digest.hexdigest()}"


def _cached(root: Path, tag: str, source: Path, decode) -> ImageArrays:  # noqa: ANN001
    cache = decoded_cache_dir(root) / f"{tag}.npz"
    key = _source_key(source)
    arrays = _load_cache(cache, key)
    if arrays is None:
        arrays = decode()
        try:
            _save_cache(cache, arrays, key)
        except OSError as exc:  # a full or read-only cache location only costs a re-decode next time
            print(f"lakd: note: could not write the decode cache '{cache}' ({exc.strerror or exc}); the images "
                  "are decoded again next time", file=sys.stderr)
    return arrays


def find_cifar_forms(name: str, root: Path) -> list[tuple[str, Path]]:
    """The forms of dataset ``name`` present under ``root``, as ``(form, path)``, preferred first."""
    found = []
    if (root / name / "train.npz").is_file() and (root / name / "test.npz").is_file():
        found.append(("npz-jpeg", root / name))
    if (root / PICKLE_FOLDERS[name]).is_dir():
        found.append(("python-pickle", root / PICKLE_FOLDERS[name]))
    if (root / name / "train").is_dir() and (root / name / "test").is_dir():
        found.append(("image-folder", root / name))
    return found


def load_cifar(name: str, root: Path, split: str) -> ImageArrays:
    """Decoded ``split`` ('train' or 'test') of CIFAR ``name`` from whichever form is under ``root``."""
    if name not in CIFAR_NAMES:
        raise LakdError(f"unknown CIFAR dataset '{name}'; expected one of {CIFAR_NAMES}")
    forms = find_cifar_forms(name, root)
    if not forms:
        raise LakdError(
            f"dataset '{name}' not found under data root '{root}'. Looked for {root / name}/train.npz + "
            f"test.npz, {root / PICKLE_FOLDERS[name]}/, and {root / name}/train|test/<class>/ image folders. "
            f"Get it with `lakd data download {name} --root {root}`, or point --data-root / $LAKD_DATA at "
            "the folder that holds it."
        )
    form, path = forms[0]
    if form == "npz-jpeg":
        source = path / f"{split}.npz"
        return _cached(root, f"{name}-{split}-npz", source, lambda: decode_jpeg_npz(source))
    if form == "python-pickle":
        from lakd.data.safe_pickle import read_cifar_python

        marker = path  # the whole folder: every batch file's contents make the cache key

        def decode_pickle() -> ImageArrays:
            x, y, classes = read_cifar_python(root, name, split)
            return ImageArrays(x, y, classes)

        return _cached(root, f"{name}-{split}-pickle", marker, decode_pickle)
    from lakd.data.folder import read_image_folder

    def decode_folder() -> ImageArrays:
        x, y, classes = read_image_folder(path / split)
        return ImageArrays(x, y, classes)

    return _cached(root, f"{name}-{split}-folder", path / split, decode_folder)
