"""ImageFolder-style datasets (``<path>/<class>/<image>``) decoded once into uint8 arrays.

Same conventions as torchvision's ImageFolder, so existing folders work unchanged: class folders sorted
by name give labels 0..C-1, images are found recursively under each class folder and sorted. Hidden
entries (``.ipynb_checkpoints``, macOS ``._x.jpg`` resource forks) are skipped because they are never
images and would otherwise show up as a bogus class or a "corrupt" file.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from lakd.errors import LakdError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
_BILINEAR = getattr(Image, "Resampling", Image).BILINEAR  # Pillow >= 9.1 moved the constants


class ImageFolderError(LakdError, ValueError):
    """The folder exists but its content cannot be turned into one image array."""


class ImageFolderNotFound(LakdError, FileNotFoundError):
    """The folder to read does not exist or is not a folder."""


def _visible(entry: Path) -> bool:
    return not entry.name.startswith(".")


def _class_image_paths(class_dir: Path, root: Path | None = None) -> list[str]:
    """Image files anywhere under ``class_dir`` (links followed, as ImageFolder does), sorted by relative path.

    Every directory is visited once (by device and inode), so a link loop is not followed round and round. A link
    (to a folder or to one image) that leads into another folder of the same data set (``root``: another class, or
    test/ from train/) is an error, since its images would be labelled as this class or scored as unseen. Plain
    strings, not ``Path`` objects, and file links told apart by the directory entry's type without a ``stat``:
    ImageNet has 1.28 M files.
    """
    found: list[tuple[str, str]] = []  # (path relative to class_dir with '/', full path)
    top = str(class_dir)
    own = os.path.realpath(top)
    data_root = os.path.realpath(root) if root is not None else None

    def elsewhere_in_data_set(real: str) -> bool:
        inside_own = real == own or real.startswith(own + os.sep)
        return data_root is not None and not inside_own and (real == data_root or real.startswith(data_root + os.sep))

    visited: set[tuple[int, int]] = set()
    pending = [top]
    while pending:
        dirpath = pending.pop()
        st = os.stat(dirpath)
        if (st.st_dev, st.st_ino) in visited:  # reached again through a link (a loop, or two links)
            continue
        visited.add((st.st_dev, st.st_ino))
        real = os.path.realpath(dirpath)
        if own.startswith(real.rstrip(os.sep) + os.sep):
            raise ImageFolderError(f"'{dirpath}' links to '{real}', a folder that contains it: a link loop. Remove "
                                   "the link")
        if elsewhere_in_data_set(real):
            raise ImageFolderError(f"'{dirpath}' links to '{real}', another folder of the same data set; its "
                                   f"images would be labelled '{class_dir.name}'. Remove the link")
        rel = os.path.relpath(dirpath, top).replace(os.sep, "/")
        prefix = "" if rel == "." else rel + "/"
        with os.scandir(dirpath) as entries:
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                if entry.is_dir():
                    pending.append(entry.path)
                elif os.path.splitext(entry.name)[1].lower() in IMAGE_EXTENSIONS:
                    if entry.is_symlink() and elsewhere_in_data_set(target := os.path.realpath(entry.path)):
                        raise ImageFolderError(f"'{entry.path}' links to '{target}', an image of another folder "
                                               f"of the same data set; it would be labelled '{class_dir.name}'. "
                                               "Remove the link")
                    found.append((prefix + entry.name, entry.path))
    found.sort(key=lambda item: item[0])
    return [full for _, full in found]


def list_image_folder(path: str | Path) -> tuple[list[str], list[int], list[str]]:
    """Scan ``path/<class>/...`` once: image paths, their labels and the class names (sorted folder names).

    Shared by the in-memory reader and the streaming file list, so both order and label a folder identically.
    """
    path = Path(path)
    if not path.exists():
        raise ImageFolderNotFound(f"image folder '{path}' does not exist")
    if not path.is_dir():
        raise ImageFolderNotFound(f"'{path}' is not a folder; expected {path}/<class>/<image files>")
    entries = [e for e in path.iterdir() if _visible(e)]
    if not entries:
        raise ImageFolderError(f"image folder '{path}' is empty; expected one sub-folder per class")
    class_dirs = sorted((e for e in entries if e.is_dir()), key=lambda e: e.name)
    if not class_dirs:
        raise ImageFolderError(f"image folder '{path}' has no class folders (only files); expected "
                               f"{path}/<class>/<image files>")
    files: list[str] = []
    labels: list[int] = []
    for label, class_dir in enumerate(class_dirs):
        images = _class_image_paths(class_dir, path.parent)  # the data set: train/, test/ (or val/) side by side
        if not images:
            raise ImageFolderError(f"class folder '{class_dir}' holds no images (looked for "
                                   f"{', '.join(IMAGE_EXTENSIONS)}, any case); remove it or add images")
        files.extend(images)
        labels.extend([label] * len(images))
    return files, labels, [d.name for d in class_dirs]


def _decode(path: Path, image_size: int | None) -> np.ndarray:
    """One image as RGB uint8 HWC, resized when ``image_size`` is given."""
    try:
        with Image.open(path) as img:
            if img.mode == "P" and "transparency" in img.info:
                img = img.convert("RGBA")  # Pillow warns when going P -> RGB with a transparency key
            rgb = img.convert("RGB")
            if image_size is not None and rgb.size != (image_size, image_size):
                rgb = rgb.resize((image_size, image_size), _BILINEAR)
            return np.asarray(rgb, dtype=np.uint8)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        # UnidentifiedImageError and truncated files are OSErrors; some malformed headers raise the others.
        raise ImageFolderError(f"cannot decode image {path}: {type(exc).__name__}: {exc}. "
                               "Remove or replace the file.") from exc


def read_image_folder(
    path: str | Path, image_size: int | None = None
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Decode every image under ``path/<class>/`` into ``x`` uint8 (N, H, W, 3), ``y`` int64, class names.

    All images must share one size unless ``image_size`` is given, in which case each is resized
    (bilinear) to ``image_size`` x ``image_size``. Extensions accepted (any case): png, jpg, jpeg, bmp, webp;
    other files are ignored.
    """
    if image_size is not None and (not isinstance(image_size, int) or image_size <= 0):
        raise ImageFolderError(f"image_size must be a positive int or None, got {image_size!r}")
    names, labels, classes = list_image_folder(path)
    files = [Path(f) for f in names]
    first = _decode(files[0], image_size)
    x = np.empty((len(files), *first.shape), dtype=np.uint8)
    x[0] = first
    for i in range(1, len(files)):
        arr = _decode(files[i], image_size)
        if arr.shape != first.shape:
            raise ImageFolderError(
                f"image {files[i]} is {arr.shape[1]}x{arr.shape[0]} (width x height) but {files[0]} is "
                f"{first.shape[1]}x{first.shape[0]}; all images must share one size — pass image_size "
                "(data.image_size) to resize them all to image_size x image_size, or stream the folder "
                "(data.stream: true), which crops each image on the fly"
            )
        x[i] = arr
    return x, np.asarray(labels, dtype=np.int64), classes
