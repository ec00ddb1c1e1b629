"""Read (and write fakes of) the official CIFAR "python version" without letting a pickle execute code.

The official files are Python 2 pickles of plain dicts: ``b'data'`` is a uint8 numpy array of shape
(N, 3072) (row-major CHW per image), labels are lists of ints, names are byte strings. Unpickling them
needs only numpy's array-reconstruction globals, so :class:`_RestrictedUnpickler` allows exactly those
(``_reconstruct``, ``ndarray``, ``dtype``, ``scalar``, ``_frombuffer``; numpy 1 ``numpy.core`` and numpy 2
``numpy._core`` spellings), each wrapped to refuse object dtypes, plus the two spellings Python 3 uses for
bytes at protocol <= 2 (``_codecs.encode(str, 'latin1')``, ``bytes()``), restricted to exactly that use.
Every other global is refused, so a tampered file fails with :class:`UnsafePickleError` instead of running
its payload. Nothing named in a file is ever imported.
"""

from __future__ import annotations

import io
import pickle
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from lakd.errors import LakdError, first_line

try:  # numpy >= 2 (numpy 1.26 also ships this alias)
    from numpy._core import multiarray as _multiarray
    from numpy._core import numeric as _numeric
except ImportError:  # pragma: no cover - numpy 1.x without the alias
    from numpy.core import multiarray as _multiarray  # type: ignore[no-redef]
    from numpy.core import numeric as _numeric  # type: ignore[no-redef]

CIFAR_FOLDERS = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}
_SPLIT_FILES = {
    ("cifar10", "train"): tuple(f"data_batch_{i}" for i in range(1, 6)),
    ("cifar10", "test"): ("test_batch",),
    ("cifar100", "train"): ("train",),
    ("cifar100", "test"): ("test",),
}
_META_FILE = {"cifar10": "batches.meta", "cifar100": "meta"}
_LABELS_KEY = {"cifar10": "labels", "cifar100": "fine_labels"}
_NAMES_KEY = {"cifar10": "label_names", "cifar100": "fine_label_names"}
_IMAGE_SHAPE = (3, 32, 32)  # CHW, as stored
_ROW = 3 * 32 * 32


class UnsafePickleError(LakdError, ValueError):
    """The pickle asked for a global outside the allow-list: it may try to run code, so it is refused."""


class CifarFormatError(LakdError, ValueError):
    """A CIFAR file is readable but not in the official layout (corrupt, truncated or a different format)."""


class CifarFilesMissing(LakdError, FileNotFoundError):
    """Files of the official CIFAR layout are not where they should be."""


def _checked_dtype(*args: Any) -> np.dtype:
    """``numpy.dtype`` minus object dtypes: an object array could hold anything, CIFAR never needs one."""
    dtype = np.dtype(*args)
    if dtype.hasobject:
        raise UnsafePickleError(f"object dtype {dtype!r} refused")
    return dtype


class _NdarrayToken:
    """What a pickle gets for the global ``numpy.ndarray``: a name to pass to ``_reconstruct``, not a callable.

    Calling ``numpy.ndarray(shape)`` from a pickle would allocate any shape it names (a 100-byte file asking for
    gigabytes); only ``_reconstruct`` below may build an array, and only an empty one.
    """

    def __repr__(self) -> str:
        return "numpy.ndarray"


_NDARRAY = _NdarrayToken()


def _checked_reconstruct(subtype: Any, shape: Any, dtype: Any) -> np.ndarray:
    """``_reconstruct`` only for plain ndarrays (never a subclass with its own hooks), and only of shape (0,).

    numpy pickles every array as ``_reconstruct(ndarray, (0,), ...)`` followed by ``__setstate__`` with the real
    shape and the raw bytes, which numpy checks against each other; so the memory an array takes is bounded by the
    bytes in the file. Any other shape would be allocated here without data: refused.
    """
    if subtype is not _NDARRAY:
        raise UnsafePickleError(f"array subtype {subtype!r} refused")
    if not isinstance(shape, tuple | list) or tuple(shape) != (0,):
        raise UnsafePickleError(f"array reconstruction with shape {shape!r} refused (numpy pickles use (0,))")
    return _multiarray._reconstruct(np.ndarray, (0,), dtype)


def _checked_scalar(dtype: Any, *args: Any) -> Any:
    """numpy scalar reconstruction, for plain (non-object) dtypes only."""
    if not isinstance(dtype, np.dtype) or dtype.hasobject:
        raise UnsafePickleError(f"numpy scalar of dtype {dtype!r} refused")
    return _multiarray.scalar(dtype, *args)


def _checked_frombuffer(buffer: Any, dtype: Any, *args: Any) -> np.ndarray:
    """How numpy pickles arrays at protocol 5: ``_frombuffer(buffer, dtype, shape, order)``, plain dtypes only."""
    if not isinstance(dtype, np.dtype) or dtype.hasobject:
        raise UnsafePickleError(f"array from buffer with dtype {dtype!r} refused")
    return _numeric._frombuffer(buffer, dtype, *args)


def _latin1_encode(text: Any, encoding: Any = "utf-8", errors: Any = "strict") -> bytes:
    """How Python 3 spells ``bytes`` at pickle protocol <= 2: ``_codecs.encode(str, 'latin1')``.

    Only that exact use is allowed (str in, latin-1 out); any other codec or argument is refused.
    """
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1") or errors != "strict":
        raise UnsafePickleError(f"_codecs.encode({type(text).__name__}, {encoding!r}) refused")
    return text.encode("latin-1")


def _empty_bytes(*args: Any) -> bytes:
    """How Python 3 spells ``b''`` at pickle protocol <= 2: ``bytes()``; any argument is refused."""
    if args:
        raise UnsafePickleError("bytes() with arguments refused")
    return b""


_ALLOWED: dict[tuple[str, str], Callable[..., Any]] = {}
for _module in ("numpy.core.multiarray", "numpy._core.multiarray"):
    _ALLOWED[(_module, "_reconstruct")] = _checked_reconstruct
    _ALLOWED[(_module, "scalar")] = _checked_scalar
for _module in ("numpy.core.numeric", "numpy._core.numeric"):
    _ALLOWED[(_module, "_frombuffer")] = _checked_frombuffer
_ALLOWED[("numpy", "ndarray")] = _NDARRAY  # type: ignore[assignment]
_ALLOWED[("numpy", "dtype")] = _checked_dtype
_ALLOWED[("_codecs", "encode")] = _latin1_encode
_ALLOWED[("__builtin__", "bytes")] = _empty_bytes
_ALLOWED[("builtins", "bytes")] = _empty_bytes


class _RestrictedUnpickler(pickle.Unpickler):
    """An unpickler whose only reachable callables are the numpy reconstructors in ``_ALLOWED``.

    ``find_class`` is the single door through which a pickle obtains anything callable (GLOBAL,
    STACK_GLOBAL, INST, OBJ and EXT opcodes all go through it), so closing it closes code execution.
    Nothing named in the file is ever imported.
    """

    def __init__(self, file: io.BufferedIOBase, source: str) -> None:
        super().__init__(file, encoding="bytes")
        self._source = source

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"{self._source}: refused to load global '{module}.{name}'. This file is not a plain "
                "CIFAR pickle (those need only numpy array globals); it may be trying to run code. "
                "Delete it and download the official archive again."
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError(f"{self._source}: persistent id {pid!r} refused")


def safe_load_pickle(path: str | Path) -> object:
    """Unpickle ``path`` (Python 2 str -> bytes) allowing only numpy array reconstruction.

    Raises :class:`UnsafePickleError` naming the refused global and the file, and
    :class:`CifarFormatError` when the file is not a complete pickle.
    """
    path = Path(path)
    # From memory, not the file: a length field in the pickle (bytes, strings) then cannot make the reader
    # allocate more than the file holds; a crafted one just reads short and fails as a truncated pickle.
    with io.BytesIO(path.read_bytes()) as f:
        try:
            return _RestrictedUnpickler(f, str(path)).load()
        except UnsafePickleError as exc:
            if str(path) in str(exc):
                raise
            raise UnsafePickleError(f"{path}: {exc}") from None
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError,
                IndexError, KeyError, struct.error, MemoryError, OverflowError) as exc:
            raise CifarFormatError(f"{path}: not a readable pickle ({type(exc).__name__}: {first_line(exc)}); the file "
                                   "is corrupt or truncated — delete it and download it again") from exc


def cifar_python_files(name: str, split: str | None = None) -> list[str]:
    """File names (relative to the dataset folder) of the official layout: one split, or all with meta."""
    _check_name(name)
    splits = ("train", "test") if split is None else (_check_split(split),)
    files = [f for s in splits for f in _SPLIT_FILES[(name, s)]]
    return [*files, _META_FILE[name]]


def cifar_python_complete(directory: str | Path, name: str) -> bool:
    """Whether ``directory/<official folder>`` holds every file of the official layout."""
    folder = Path(directory) / CIFAR_FOLDERS[_check_name(name)]
    return all((folder / f).is_file() for f in cifar_python_files(name))


def _check_name(name: str) -> str:
    if name not in CIFAR_FOLDERS:
        raise CifarFormatError(f"unknown CIFAR dataset '{name}'; expected one of {sorted(CIFAR_FOLDERS)}")
    return name


def _check_split(split: str) -> str:
    if split not in ("train", "test"):
        raise CifarFormatError(f"unknown split '{split}'; expected 'train' or 'test'")
    return split


def _str_keys(obj: object, path: Path) -> dict[str, Any]:
    """The pickled dict with keys as str (Python 2 files give bytes keys under encoding='bytes')."""
    if not isinstance(obj, dict):
        raise CifarFormatError(f"{path}: expected a pickled dict, found {type(obj).__name__}")
    return {(k.decode("latin-1") if isinstance(k, bytes) else str(k)): v for k, v in obj.items()}


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return value.decode("latin-1")
    return str(value)


def read_cifar_python(
    directory: str | Path, name: str, split: str
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Read one split of the official CIFAR python version found under ``directory``.

    ``directory`` is the folder that *contains* ``cifar-10-batches-py`` / ``cifar-100-python``.
    Returns ``x`` uint8 (N, 32, 32, 3) HWC, ``y`` int64 (N,) and the class names (fine labels for
    CIFAR-100).
    """
    _check_name(name)
    _check_split(split)
    directory = Path(directory)
    folder = directory / CIFAR_FOLDERS[name]
    needed = cifar_python_files(name, split)
    missing = [f for f in needed if not (folder / f).is_file()]
    if missing:
        hint = ""
        if directory.name == CIFAR_FOLDERS[name]:
            hint = f" This looks like the dataset folder itself; pass its parent '{directory.parent}'."
        raise CifarFilesMissing(
            f"{name} ({split}) python version not found: expected "
            f"{', '.join(str(folder / f) for f in missing)}."
            f" '{directory}' must be the folder that contains '{CIFAR_FOLDERS[name]}/' as extracted from the "
            f"official archive.{hint}"
        )

    meta_path = folder / _META_FILE[name]
    meta = _str_keys(safe_load_pickle(meta_path), meta_path)
    if _NAMES_KEY[name] not in meta:
        raise CifarFormatError(f"{meta_path}: no '{_NAMES_KEY[name]}' entry (keys: {sorted(meta)})")
    names = meta[_NAMES_KEY[name]]
    if not isinstance(names, list | tuple) or not names:
        raise CifarFormatError(f"{meta_path}: '{_NAMES_KEY[name]}' must be a non-empty list of class names, found "
                               f"{type(names).__name__}")
    classes = [_text(c) for c in names]

    xs, ys = [], []
    for file in _SPLIT_FILES[(name, split)]:
        path = folder / file
        batch = _str_keys(safe_load_pickle(path), path)
        data, labels = batch.get("data"), batch.get(_LABELS_KEY[name])
        if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.shape[1:] == (_ROW,)):
            found = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
            raise CifarFormatError(f"{path}: 'data' must be uint8 of shape (N, {_ROW}), found {found}")
        if labels is None:
            raise CifarFormatError(f"{path}: no '{_LABELS_KEY[name]}' entry (keys: {sorted(batch)})")
        try:
            array = np.asarray(labels) if isinstance(labels, list | tuple | np.ndarray) else None
            kind = "?" if array is None else "i" if array.size == 0 else array.dtype.kind  # an empty batch is fine
        except (ValueError, TypeError):  # ragged or mixed
            kind = "?"
        if kind not in "iu":
            raise CifarFormatError(f"{path}: '{_LABELS_KEY[name]}' must be a list of integer class indices, found "
                                   f"{type(labels).__name__}")
        y = np.asarray(labels, dtype=np.int64).reshape(-1)
        if len(y) != len(data):
            raise CifarFormatError(f"{path}: {len(data)} images but {len(y)} labels")
        xs.append(data)
        ys.append(y)

    y = np.concatenate(ys)
    if len(y) and (y.min() < 0 or y.max() >= len(classes)):
        raise CifarFormatError(f"{folder}: labels span [{y.min()}, {y.max()}] but there are {len(classes)} "
                               f"class names in {meta_path.name}")
    x = np.concatenate(xs).reshape(-1, *_IMAGE_SHAPE).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(x), y, classes


# ----------------------------------------------------------------------------------------------- writing


class _Py2StylePickler(pickle._Pickler):  # type: ignore[name-defined]
    """Protocol 2 pickler that writes strings the way Python 2 did, as the official CIFAR files do.

    Python 3 would spell bytes as ``_codecs.encode(...)`` calls at protocol 2; writing them as Python 2
    ``str`` opcodes instead keeps the fakes byte-for-byte in the official style, so the only globals in them
    are numpy's (spelled ``numpy.core.multiarray`` as numpy 1 wrote them) and tests read the real format.
    """

    dispatch = dict(pickle._Pickler.dispatch)  # type: ignore[attr-defined]
    _GLOBALS = {
        id(_multiarray._reconstruct): ("numpy.core.multiarray", "_reconstruct"),
        id(np.ndarray): ("numpy", "ndarray"),
        id(np.dtype): ("numpy", "dtype"),
    }

    def save_py2_str(self, obj: bytes | str) -> None:
        if isinstance(obj, str):
            try:
                data = obj.encode("latin-1")
            except UnicodeEncodeError:
                self.save_str(obj)
                return
        else:
            data = obj
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str
    dispatch[str] = save_py2_str

    def save_global(self, obj: Any, name: str | None = None) -> None:
        try:
            module, qualname = self._GLOBALS[id(obj)]
        except KeyError:
            raise pickle.PicklingError(f"write_cifar_python only writes numpy arrays, not {obj!r}") from None
        self.write(pickle.GLOBAL + f"{module}\n{qualname}\n".encode("ascii"))
        self.memoize(obj)

    dispatch[type] = save_global


def _dump(obj: dict[bytes, Any], path: Path) -> None:
    with open(path, "wb") as f:
        _Py2StylePickler(f, protocol=2).dump(obj)


def write_cifar_python(
    directory: str | Path,
    name: str,
    x: np.ndarray,
    y: np.ndarray,
    class_names: list[str],
    *,
    split: str | None = None,
) -> Path:
    """Write ``x``/``y`` as a (small, fake) CIFAR python version in the official layout and format.

    Exists so tests can exercise the real reading path without the real data. ``x`` is uint8
    (N, 32, 32, 3) HWC. With ``split=None`` the same images are written as both the train and the test
    split (a complete folder); with ``'train'`` / ``'test'`` only that split (plus the meta file) is written,
    so two calls can give different splits. CIFAR-10 train data is spread over the official 5 batch files;
    CIFAR-100 coarse labels are faked as ``fine // 5``. Returns the dataset folder.
    """
    _check_name(name)
    splits = ("train", "test") if split is None else (_check_split(split),)
    x = np.asarray(x)
    y = np.asarray(y)
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[1:] != (32, 32, 3):
        raise ValueError(f"x must be uint8 of shape (N, 32, 32, 3), got {x.dtype} {x.shape}")
    if y.shape != (len(x),) or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"y must be integers of shape ({len(x)},), got {y.dtype} {y.shape}")
    if len(y) and (y.min() < 0 or y.max() >= len(class_names)):
        raise ValueError(f"labels span [{y.min()}, {y.max()}] but there are {len(class_names)} class names")

    folder = Path(directory) / CIFAR_FOLDERS[name]
    folder.mkdir(parents=True, exist_ok=True)
    rows = np.ascontiguousarray(x.transpose(0, 3, 1, 2).reshape(len(x), _ROW))
    labels = [int(v) for v in y]
    filenames = [f"fake_{i:05d}.png".encode() for i in range(len(x))]
    names = [c.encode("utf-8") for c in class_names]
    n_coarse = max(1, -(-len(class_names) // 5))

    for s in splits:
        files = _SPLIT_FILES[(name, s)]
        chunks = np.array_split(np.arange(len(x)), len(files))
        for i, (file, idx) in enumerate(zip(files, chunks, strict=True), start=1):
            kind = "training" if s == "train" else "testing"
            batch: dict[bytes, Any] = {b"batch_label": f"{kind} batch {i} of {len(files)}".encode()}
            if name == "cifar10":
                batch[b"labels"] = [labels[j] for j in idx]
            else:
                batch[b"fine_labels"] = [labels[j] for j in idx]
                batch[b"coarse_labels"] = [labels[j] // 5 for j in idx]
            batch[b"data"] = rows[idx]
            batch[b"filenames"] = [filenames[j] for j in idx]
            _dump(batch, folder / file)

    if name == "cifar10":
        meta = {b"num_cases_per_batch": -(-len(x) // 5), b"label_names": names, b"num_vis": _ROW}
    else:
        coarse = [f"coarse_{i}".encode() for i in range(n_coarse)]
        meta = {b"fine_label_names": names, b"coarse_label_names": coarse}
    _dump(meta, folder / _META_FILE[name])
    return folder
