"""CIFAR python-pickle reader/writer, ImageFolder reader and the downloader (against a local server only)."""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import pickletools
import shlex
import socket
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lakd.data.download import CIFAR_ARCHIVES, DownloadError, download_cifar, md5_file
from lakd.data.folder import ImageFolderError, read_image_folder
from lakd.data.safe_pickle import (
    CIFAR_FOLDERS,
    CifarFormatError,
    UnsafePickleError,
    read_cifar_python,
    safe_load_pickle,
    write_cifar_python,
)
from lakd.errors import LakdError


def _images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)


def _globals_in(path: Path) -> set[str]:
    return {str(arg) for op, arg, _ in pickletools.genops(path.read_bytes()) if op.name == "GLOBAL"}


# ------------------------------------------------------------------------------------------ safe_pickle


@pytest.mark.parametrize("name, n_classes", [("cifar10", 10), ("cifar100", 100)])
def test_cifar_python_round_trip(tmp_path: Path, name: str, n_classes: int) -> None:
    x_train, x_test = _images(23, seed=1), _images(7, seed=2)
    y_train, y_test = np.arange(23) % n_classes, (np.arange(7) * 3) % n_classes
    classes = [f"class_{i}" for i in range(n_classes)]
    write_cifar_python(tmp_path, name, x_train, y_train, classes, split="train")
    folder = write_cifar_python(tmp_path, name, x_test, y_test, classes, split="test")
    assert folder == tmp_path / CIFAR_FOLDERS[name]

    for split, x_ref, y_ref in (("train", x_train, y_train), ("test", x_test, y_test)):
        x, y, names = read_cifar_python(tmp_path, name, split)
        assert x.dtype == np.uint8 and x.shape == (len(x_ref), 32, 32, 3) and x.flags.c_contiguous
        assert y.dtype == np.int64 and y.shape == (len(x_ref),)
        np.testing.assert_array_equal(x, x_ref)
        np.testing.assert_array_equal(y, y_ref)
        assert names == classes

    expected = ["batches.meta", *(f"data_batch_{i}" for i in range(1, 6)), "test_batch"]
    if name == "cifar100":
        expected = ["meta", "test", "train"]
    assert sorted(p.name for p in folder.iterdir()) == expected


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_pixel_channel_placement_is_hwc(tmp_path: Path, name: str) -> None:
    x = np.zeros((1, 32, 32, 3), dtype=np.uint8)
    x[0, 3, 5] = (10, 20, 30)  # row 3, column 5: R=10, G=20, B=30
    write_cifar_python(tmp_path, name, x, np.zeros(1, dtype=np.int64), ["only"])

    # On disk: one row of 3072 = R plane, G plane, B plane, each 32x32 row-major (the official layout).
    first = "data_batch_1" if name == "cifar10" else "train"
    raw = safe_load_pickle(tmp_path / CIFAR_FOLDERS[name] / first)[b"data"]
    assert raw.shape == (1, 3072) and raw.dtype == np.uint8
    assert [raw[0, c * 1024 + 3 * 32 + 5] for c in range(3)] == [10, 20, 30]
    assert np.count_nonzero(raw) == 3

    got, _, _ = read_cifar_python(tmp_path, name, "train")
    assert got[0, 3, 5].tolist() == [10, 20, 30]
    assert got[0, 5, 3].tolist() == [0, 0, 0]  # not transposed
    assert np.count_nonzero(got) == 3


def test_written_files_are_python2_style_and_torchvision_readable(tmp_path: Path) -> None:
    folder = write_cifar_python(tmp_path, "cifar10", _images(12), np.arange(12) % 10, [str(i) for i in range(10)])
    allowed = {"numpy.core.multiarray _reconstruct", "numpy ndarray", "numpy dtype"}
    for path in folder.iterdir():
        assert _globals_in(path) <= allowed, path
    # torchvision reads the official files with the plain unpickler and encoding='latin1'.
    with open(folder / "data_batch_1", "rb") as f:
        batch = pickle.load(f, encoding="latin1")
    assert set(batch) == {"batch_label", "labels", "data", "filenames"}
    assert batch["data"].shape == (3, 3072)
    with open(folder / "batches.meta", "rb") as f:
        assert pickle.load(f, encoding="latin1")["label_names"][:2] == ["0", "1"]


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_python3_pickles_of_plain_arrays_load(tmp_path: Path, protocol: int) -> None:
    # Re-saved copies use numpy 2's numpy._core spelling and, at protocol 2, _codecs.encode for bytes.
    obj = {b"data": _images(2).reshape(2, -1), b"labels": [1, 2], b"empty": b"", b"name": b"x" * 300}
    path = tmp_path / "batch"
    path.write_bytes(pickle.dumps(obj, protocol=protocol))
    loaded = safe_load_pickle(path)
    np.testing.assert_array_equal(loaded[b"data"], obj[b"data"])
    assert loaded[b"labels"] == [1, 2] and loaded[b"empty"] == b"" and loaded[b"name"] == b"x" * 300


class _Payload:
    """Pickles as a call of ``func(arg)``; only ever pickled here, never unpickled by the unsafe loader."""

    def __init__(self, func: object, arg: str) -> None:
        self.func, self.arg = func, arg

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return self.func, (self.arg,)


@pytest.mark.parametrize("kind", ["os.system", "builtins.eval", "builtins.exec"])
@pytest.mark.parametrize("protocol", [0, 2, 5])
def test_malicious_pickle_is_refused_without_running(tmp_path: Path, kind: str, protocol: int) -> None:
    marker = tmp_path / "pwned"
    payload = {
        "os.system": _Payload(os.system, f"touch {shlex.quote(str(marker))}"),
        "builtins.eval": _Payload(eval, f"open({str(marker)!r}, 'w').close()"),
        "builtins.exec": _Payload(exec, f"open({str(marker)!r}, 'w').close()"),
    }[kind]
    path = tmp_path / "data_batch_1"
    path.write_bytes(pickle.dumps({b"data": _images(1).reshape(1, -1), b"labels": [payload]}, protocol=protocol))

    with pytest.raises(UnsafePickleError) as info:
        safe_load_pickle(path)
    message = str(info.value)
    assert str(path) in message
    assert kind.split(".")[1] in message  # e.g. 'posix.system', 'builtins.eval'
    assert isinstance(info.value, ValueError) and isinstance(info.value, LakdError)
    assert not marker.exists()


def test_reader_refuses_a_tampered_cifar_file(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    write_cifar_python(tmp_path, "cifar100", _images(4), np.arange(4), ["a", "b", "c", "d"])
    train = tmp_path / "cifar-100-python" / "train"
    evil = {b"data": _images(1).reshape(1, -1), b"fine_labels": _Payload(os.system, f"touch {marker}")}
    train.write_bytes(pickle.dumps(evil, protocol=2))
    with pytest.raises(UnsafePickleError, match="system"):
        read_cifar_python(tmp_path, "cifar100", "train")
    assert not marker.exists()


@pytest.mark.parametrize(
    "stream, refused",
    [
        # numpy's own exec gadget: an allowed package, but not an allowed name.
        (b"cnumpy.testing._private.utils\nrunstring\n(Vopen('MARKER', 'w').close()\n(dtR.", "runstring"),
        # _codecs.encode is allowed only as str -> latin-1 bytes.
        (b"c_codecs\nencode\n(Vabc\nVrot13\ntR.", "rot13"),
        (b"c__builtin__\nbytes\n(I1000000000\ntR.", "bytes"),
        (b"cnumpy.core.multiarray\n_reconstruct\n(cnumpy\nmatrix\n(I0\ntS'b'\ntR.", "numpy.matrix"),
    ],
)
def test_handwritten_gadgets_are_refused(tmp_path: Path, stream: bytes, refused: str) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "gadget.pkl"
    path.write_bytes(stream.replace(b"MARKER", str(marker).encode()))
    with pytest.raises(UnsafePickleError, match=refused):
        safe_load_pickle(path)
    assert not marker.exists()


def test_object_arrays_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "objects.pkl"
    path.write_bytes(pickle.dumps(np.array([1, "a"], dtype=object), protocol=2))
    with pytest.raises(UnsafePickleError, match="object dtype"):
        safe_load_pickle(path)


def test_missing_and_corrupt_cifar_files(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"cifar-10-batches-py.data_batch_1") as info:
        read_cifar_python(tmp_path, "cifar10", "train")
    assert isinstance(info.value, LakdError)

    folder = write_cifar_python(tmp_path, "cifar10", _images(5), np.arange(5), list("abcde"))
    with pytest.raises(FileNotFoundError, match="pass its parent"):
        read_cifar_python(folder, "cifar10", "test")

    (folder / "data_batch_3").unlink()
    with pytest.raises(FileNotFoundError, match="data_batch_3"):
        read_cifar_python(tmp_path, "cifar10", "train")
    read_cifar_python(tmp_path, "cifar10", "test")  # the other split is still fine

    test_batch = folder / "test_batch"
    test_batch.write_bytes(test_batch.read_bytes()[:100])
    with pytest.raises(CifarFormatError, match="truncated"):
        read_cifar_python(tmp_path, "cifar10", "test")

    with pytest.raises(CifarFormatError, match="unknown CIFAR dataset"):
        read_cifar_python(tmp_path, "cifar1000", "test")


# ------------------------------------------------------------------------------------------------ folder


def _save(path: Path, array: np.ndarray, **kwargs: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, **kwargs)


def test_image_folder_reads_png_and_jpeg(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    dog = [rng.integers(0, 256, (6, 5, 3), dtype=np.uint8) for _ in range(2)]
    _save(tmp_path / "dog" / "b.PNG", dog[1])
    _save(tmp_path / "dog" / "a.png", dog[0])
    flat = np.full((6, 5, 3), (200, 40, 90), dtype=np.uint8)
    _save(tmp_path / "cat" / "x.JPG", flat, quality=95)
    _save(tmp_path / "cat" / "sub" / "y.jpeg", flat, quality=95)
    _save(tmp_path / "cat" / "z.bmp", dog[0][:, :, 0])  # grayscale -> RGB
    (tmp_path / "cat" / "notes.txt").write_text("ignored")
    (tmp_path / "cat" / "._x.JPG").write_bytes(b"macOS resource fork, not an image")
    (tmp_path / ".ipynb_checkpoints").mkdir()

    x, y, classes = read_image_folder(tmp_path)
    assert classes == ["cat", "dog"]
    assert x.dtype == np.uint8 and x.shape == (5, 6, 5, 3)
    assert y.dtype == np.int64 and y.tolist() == [0, 0, 0, 1, 1]
    assert np.abs(x[0].astype(int) - flat).max() <= 3  # JPEG: close, not exact
    np.testing.assert_array_equal(x[2], np.repeat(dog[0][:, :, :1], 3, axis=2))  # cat/z.bmp
    np.testing.assert_array_equal(x[3], dog[0])  # dog/a.png before dog/b.PNG
    np.testing.assert_array_equal(x[4], dog[1])


def test_image_folder_resizes_mixed_sizes_when_asked(tmp_path: Path) -> None:
    _save(tmp_path / "a" / "1.png", np.zeros((10, 20, 3), dtype=np.uint8))
    _save(tmp_path / "b" / "1.webp", np.zeros((7, 7, 4), dtype=np.uint8), lossless=True)
    _save(tmp_path / "b" / "2.png", np.full((8, 8, 3), 255, dtype=np.uint8))
    x, y, _ = read_image_folder(tmp_path, image_size=8)
    assert x.shape == (3, 8, 8, 3) and y.tolist() == [0, 1, 1]
    assert (x[2] == 255).all()


def test_image_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_image_folder(tmp_path / "nope")

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ImageFolderError, match="is empty"):
        read_image_folder(empty)

    only_files = tmp_path / "only_files"
    _save(only_files / "loose.png", np.zeros((4, 4, 3), dtype=np.uint8))
    with pytest.raises(ImageFolderError, match="no class folders"):
        read_image_folder(only_files)

    no_images = tmp_path / "no_images"
    _save(no_images / "a" / "1.png", np.zeros((4, 4, 3), dtype=np.uint8))
    (no_images / "b").mkdir()
    (no_images / "b" / "readme.txt").write_text("x")
    with pytest.raises(ImageFolderError, match=r"class folder '.*no_images.b' holds no images"):
        read_image_folder(no_images)

    corrupt = tmp_path / "corrupt"
    _save(corrupt / "a" / "1.png", np.zeros((4, 4, 3), dtype=np.uint8))
    (corrupt / "a" / "2.jpg").write_bytes(b"\xff\xd8 definitely not a jpeg")
    with pytest.raises(ImageFolderError, match=r"cannot decode image .*2\.jpg"):
        read_image_folder(corrupt)

    truncated = tmp_path / "truncated"
    _save(truncated / "a" / "1.png", np.zeros((16, 16, 3), dtype=np.uint8))
    good = io.BytesIO()
    Image.fromarray(_images(1)[0]).save(good, format="PNG")
    (truncated / "a" / "2.png").write_bytes(good.getvalue()[:-40])
    with pytest.raises(ImageFolderError, match=r"2\.png"):
        read_image_folder(truncated)

    mixed = tmp_path / "mixed"
    _save(mixed / "a" / "1.png", np.zeros((4, 6, 3), dtype=np.uint8))
    _save(mixed / "b" / "2.png", np.zeros((5, 5, 3), dtype=np.uint8))
    with pytest.raises(ImageFolderError, match=r"b.2\.png is 5x5 .*a.1\.png is 6x4.*image_size") as info:
        read_image_folder(mixed)
    assert isinstance(info.value, ValueError)


# ---------------------------------------------------------------------------------------------- download


def _archive(tmp_path: Path, served: Path, extra: list[tuple[tarfile.TarInfo, bytes | None]] = (),
             drop: str | None = None) -> tuple[str, str, np.ndarray]:
    """Build cifar-10-python.tar.gz (official layout, optional extra/dropped members); returns name, md5, x."""
    x = _images(10, seed=5)
    src = tmp_path / "src"
    folder = write_cifar_python(src, "cifar10", x, np.arange(10), [f"c{i}" for i in range(10)])
    if drop:
        (folder / drop).unlink()
    archive = served / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname="cifar-10-batches-py")
        for info, data in extra:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return archive.name, hashlib.md5(archive.read_bytes()).hexdigest(), x


def test_archive_table_is_consistent() -> None:
    assert {n: v[2] for n, v in CIFAR_ARCHIVES.items()} == CIFAR_FOLDERS
    for url, md5, _folder in CIFAR_ARCHIVES.values():
        assert url.startswith("https://") and url.endswith(".tar.gz")
        assert len(md5) == 32 and int(md5, 16) >= 0


def test_md5_file(tmp_path: Path) -> None:
    path = tmp_path / "blob"
    path.write_bytes(os.urandom(3 * 1024 + 7))
    assert md5_file(path, chunk_size=1000) == hashlib.md5(path.read_bytes()).hexdigest()


def test_download_extracts_verifies_and_is_idempotent(tmp_path: Path, server) -> None:
    name, md5, x = _archive(tmp_path, server.served)
    root = tmp_path / "data" / "root"  # does not exist yet
    folder = download_cifar("cifar10", root, url=f"{server.url}/{name}", md5=md5.upper(), progress=True)
    assert folder == root / "cifar-10-batches-py"
    assert sorted(os.listdir(root)) == ["cifar-10-batches-py"]  # no temp file or temp folder left
    got, y, classes = read_cifar_python(root, "cifar10", "train")
    np.testing.assert_array_equal(got, x)
    assert classes[0] == "c0" and len(server.hits) == 1

    assert download_cifar("cifar10", root, url=f"{server.url}/{name}", md5=md5, progress=False) == folder
    assert len(server.hits) == 1  # complete copy present: no second request


def test_download_replaces_an_incomplete_copy(tmp_path: Path, server) -> None:
    name, md5, _ = _archive(tmp_path, server.served)
    root = tmp_path / "root"
    (root / "cifar-10-batches-py").mkdir(parents=True)
    (root / "cifar-10-batches-py" / "batches.meta").write_bytes(b"partial")
    with pytest.warns(UserWarning, match="incomplete"):
        download_cifar("cifar10", root, url=f"{server.url}/{name}", md5=md5, progress=False)
    assert sorted(os.listdir(root)) == ["cifar-10-batches-py"]
    read_cifar_python(root, "cifar10", "test")


def test_download_md5_mismatch_leaves_nothing(tmp_path: Path, server) -> None:
    name, md5, _ = _archive(tmp_path, server.served)
    root = tmp_path / "root"
    with pytest.raises(DownloadError, match=f"expected {'0' * 32}, got {md5}") as info:
        download_cifar("cifar10", root, url=f"{server.url}/{name}", md5="0" * 32, progress=False)
    assert isinstance(info.value, RuntimeError)
    assert os.listdir(root) == []


def test_download_http_404_and_refused_connection(tmp_path: Path, server) -> None:
    root = tmp_path / "root"
    url = f"{server.url}/missing.tar.gz"
    with pytest.raises(DownloadError, match="404") as info:
        download_cifar("cifar10", root, url=url, md5="0" * 32, progress=False)
    assert url in str(info.value) and "tar -xzf" in str(info.value)
    assert os.listdir(root) == []

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(DownloadError, match="could not download .*refused"):
        download_cifar("cifar10", root, url=f"http://127.0.0.1:{port}/x.tar.gz", md5="0" * 32, progress=False)
    assert os.listdir(root) == []


def _member(name: str, kind: bytes = tarfile.REGTYPE, linkname: str = "") -> tuple[tarfile.TarInfo, bytes | None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    data = b"evil\n" if kind == tarfile.REGTYPE else None
    info.size = len(data) if data else 0
    return info, data


@pytest.mark.parametrize(
    "member, problem",
    [
        (_member("../evil"), "'..'"),
        (_member("cifar-10-batches-py/../../evil"), "'..'"),
        (_member("/tmp/lakd-test-evil-absolute"), "absolute"),
        (_member("cifar-10-batches-py/link", tarfile.SYMTYPE, "/etc/passwd"), "link"),
        (_member("cifar-10-batches-py/hard", tarfile.LNKTYPE, "cifar-10-batches-py/test_batch"), "link"),
        (_member("cifar-10-batches-py/fifo", tarfile.FIFOTYPE), "special"),
    ],
)
def test_download_refuses_unsafe_archives(tmp_path: Path, server, member, problem: str) -> None:
    name, md5, _ = _archive(tmp_path, server.served, extra=[member])
    root = tmp_path / "root"
    with pytest.raises(DownloadError, match=f"unsafe member .*{problem}"):
        download_cifar("cifar10", root, url=f"{server.url}/{name}", md5=md5, progress=False)
    assert os.listdir(root) == []
    assert not (tmp_path / "evil").exists() and not Path("/tmp/lakd-test-evil-absolute").exists()


def test_download_rejects_incomplete_or_non_tar_archives(tmp_path: Path, server) -> None:
    name, md5, _ = _archive(tmp_path, server.served, drop="data_batch_4")
    root = tmp_path / "root"
    with pytest.raises(DownloadError, match="missing cifar-10-batches-py/data_batch_4"):
        download_cifar("cifar10", root, url=f"{server.url}/{name}", md5=md5, progress=False)
    assert os.listdir(root) == []

    junk = server.served / "junk.tar.gz"
    junk.write_bytes(b"not a gzip file" * 100)
    with pytest.raises(DownloadError, match="cannot be extracted"):
        download_cifar("cifar10", root, url=f"{server.url}/junk.tar.gz", md5=md5_file(junk), progress=False)
    assert os.listdir(root) == []


def test_image_folder_links_loops_and_other_classes(tmp_path: Path) -> None:
    """Links are followed (as torchvision's ImageFolder), but a loop is one error instead of 40 levels of copies,
    and a link into another folder of the same data set (another class, the test split) is refused."""
    pixels = np.zeros((4, 4, 3), dtype=np.uint8)
    data = tmp_path / "data"
    for split, cls, name in (("train", "a", "1.png"), ("train", "a", "2.png"), ("train", "b", "3.png"),
                             ("test", "a", "4.png"), ("test", "b", "5.png")):
        _save(data / split / cls / name, pixels)
    outside = tmp_path / "elsewhere"
    _save(outside / "6.png", pixels)
    (data / "train" / "a" / "extra").symlink_to(outside, target_is_directory=True)
    (data / "train" / "a" / "extra2").symlink_to(outside, target_is_directory=True)  # the same folder twice
    x, y, classes = read_image_folder(data / "train")
    assert classes == ["a", "b"] and list(y) == [0, 0, 0, 1]  # 1, 2, extra/6 once; b/3
    loop = data / "train" / "a" / "loop"
    loop.symlink_to(data, target_is_directory=True)
    with pytest.raises(ImageFolderError, match="link loop"):
        read_image_folder(data / "train")
    loop.unlink()
    (data / "train" / "a" / "peek").symlink_to(data / "test" / "b", target_is_directory=True)
    with pytest.raises(ImageFolderError, match="another folder of the same data set"):
        read_image_folder(data / "train")
    (data / "train" / "a" / "peek").unlink()
    # file links (issue 33): a dog image also trained as a cat, a test image also trained on
    for name, target in (("dog.png", data / "train" / "b" / "3.png"), ("seen.png", data / "test" / "a" / "4.png")):
        link = data / "train" / "a" / name
        link.symlink_to(target)
        with pytest.raises(ImageFolderError, match=f"{name}' links to .*an image of another folder"):
            read_image_folder(data / "train")
        link.unlink()
    (data / "train" / "a" / "twin.png").symlink_to(data / "train" / "a" / "1.png")  # its own class: allowed
    (data / "train" / "a" / "far.png").symlink_to(outside / "6.png")  # outside the data set: allowed
    assert list(read_image_folder(data / "train")[1]) == [0] * 5 + [1]


class _BigReconstruct:
    """Pickles as numpy's own reconstructor asked for a 1,000,000-image array, with no data behind it."""

    def __reduce__(self):  # noqa: ANN204
        from numpy._core import multiarray

        return (multiarray._reconstruct, (np.ndarray, (1_000_000, 3072), b"B"))


class _BigNdarrayCall:
    """Pickles as a direct call of numpy.ndarray with a huge shape."""

    def __reduce__(self):  # noqa: ANN204
        return (np.ndarray, ((1_000_000, 3072), np.dtype("u1")))


@pytest.mark.parametrize("payload", [_BigReconstruct(), _BigNdarrayCall()], ids=["reconstruct", "ndarray-call"])
def test_restricted_unpickler_bounds_allocations_by_the_file(tmp_path: Path, payload: object) -> None:
    """A tiny file cannot make the reader allocate gigabytes: arrays only come from their own bytes."""
    import pickle
    import resource

    path = tmp_path / "data_batch_1"
    path.write_bytes(pickle.dumps({b"data": payload, b"labels": [0]}, protocol=2))
    assert path.stat().st_size < 300
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises((UnsafePickleError, CifarFormatError)):
        safe_load_pickle(path)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 200_000  # KiB: nothing near 3 GB


@pytest.mark.parametrize("fault", ["read-only root", "disk full while writing"])
def test_download_on_a_failing_disk_is_one_line_and_leaves_nothing(tmp_path: Path, server, fault: str,
                                                                   monkeypatch: pytest.MonkeyPatch,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    import errno

    import lakd.data.download as download
    from lakd.cli import main

    name, md5, _ = _archive(tmp_path, server.served)
    root = tmp_path / "root"
    root.mkdir()
    if fault == "read-only root":
        def refuse(*_a: object, **_k: object) -> None:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(root))
        monkeypatch.setattr(download.tempfile, "mkstemp", refuse)
    else:
        real_fetch = download._fetch

        def fill_up(url: str, out: object, *a: object, **k: object) -> None:
            real_fetch(url, out, *a, **k)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        monkeypatch.setattr(download, "_fetch", fill_up)
    rc = main(["data", "download", "cifar10", "--root", str(root), "--url", f"{server.url}/{name}", "--md5", md5])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err, err
    assert ("Read-only file system" if fault == "read-only root" else "No space left on device") in err
    assert len([line for line in err.strip().splitlines() if line.startswith("lakd: error")]) == 1
    assert os.listdir(root) == []  # no partial archive, no extract folder
