"""Download, verify and safely extract the official CIFAR "python version" archives.

Every step works on temporary names inside ``root`` (so the final rename stays on one filesystem and is
atomic); whatever fails, nothing half-written is left behind and an existing complete copy is never touched.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
import warnings
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from tqdm import tqdm

from lakd.data.safe_pickle import cifar_python_complete, cifar_python_files
from lakd.errors import LakdError

# name -> (url, md5 of the .tar.gz, folder the archive extracts to); the md5s are the published ones.
CIFAR_ARCHIVES: dict[str, tuple[str, str, str]] = {
    "cifar10": (
        "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        "c58f30108f718f92721af3b95e74349a",
        "cifar-10-batches-py",
    ),
    "cifar100": (
        "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        "eb9058c3a382ffc7106e4002c42a8d85",
        "cifar-100-python",
    ),
}

_CHUNK = 1 << 20
_TIMEOUT_S = 60


class DownloadError(LakdError, RuntimeError):
    """Downloading, verifying or extracting a dataset archive failed; nothing was left behind."""


def md5_file(path: str | Path, chunk_size: int = _CHUNK) -> str:
    """Hex MD5 of a file, read in chunks (the published archive checksums are MD5)."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def _manual_hint(name: str, url: str, md5: str, root: Path) -> str:
    folder = CIFAR_ARCHIVES[name][2]
    return (f"To install it by hand: fetch {url} on a machine with access, check that its MD5 is {md5}, "
            f"then run `tar -xzf {url.rsplit('/', 1)[-1]} -C {root}` so that {root / folder}/ holds "
            f"{', '.join(cifar_python_files(name))}. (A file:// URL to a local copy of the archive works too.)")


def _fetch(url: str, out: BinaryIO, progress: bool, desc: str) -> None:
    """Stream ``url`` into ``out``; raises OSError / HTTPException / ValueError on network or URL problems."""
    request = urllib.request.Request(url, headers={"User-Agent": "lakd-data-download"})
    with urllib.request.urlopen(request, timeout=_TIMEOUT_S) as response:
        length = response.headers.get("Content-Length")
        total = int(length) if length and length.isdigit() else None
        received = 0
        with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=desc,
                  disable=not progress, leave=False) as bar:
            while chunk := response.read(_CHUNK):
                out.write(chunk)
                received += len(chunk)
                bar.update(len(chunk))
    if total is not None and received != total:
        raise http.client.IncompleteRead(b"", total - received)


def _check_member(member: tarfile.TarInfo, archive_url: str) -> None:
    """Refuse anything that could land outside the extraction folder or is not a plain file / folder."""
    name = member.name
    parts = PurePosixPath(name.replace("\\", "/")).parts
    problem = None
    if not name or name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        problem = "an absolute path"
    elif ".." in parts:
        problem = "a '..' path component"
    elif member.issym() or member.islnk():
        problem = f"a link (to '{member.linkname}')"
    elif not (member.isfile() or member.isdir()):
        problem = "a device, FIFO or other special file"
    if problem:
        raise DownloadError(f"archive from {archive_url} has an unsafe member '{name}' ({problem}); refusing "
                            "to extract it. The archive is not the official one.")


def _safe_extract(archive: Path, dest: Path, archive_url: str) -> None:
    """Extract a .tar.gz into ``dest`` after checking every member (and with tarfile's 'data' filter)."""
    try:
        with tarfile.open(archive, "r:gz") as tar:
            members = tar.getmembers()
            for member in members:
                _check_member(member, archive_url)
            if hasattr(tarfile, "data_filter"):  # Python >= 3.11.4 / 3.10.12
                tar.extractall(dest, members=members, filter="data")
            else:  # pragma: no cover - older Pythons rely on the member checks above
                tar.extractall(dest, members=members)
    except (tarfile.TarError, EOFError) as exc:
        raise DownloadError(f"archive from {archive_url} cannot be extracted ({type(exc).__name__}: {exc}); "
                            "it is corrupt or not a .tar.gz") from exc


def download_cifar(
    name: str,
    root: str | Path,
    url: str | None = None,
    md5: str | None = None,
    progress: bool = True,
) -> Path:
    """Make sure ``root/<official folder>`` holds the CIFAR python version, downloading it if needed.

    Returns the dataset folder. A complete existing copy is returned as is (no network). Otherwise the
    archive is streamed to a temp file in ``root``, its MD5 checked, extracted into a temp folder in
    ``root`` with unsafe members refused, and renamed into place. ``url`` / ``md5`` override the official
    ones (a mirror, a local ``file://`` copy, or a test server); ``md5`` is always checked.
    """
    if name not in CIFAR_ARCHIVES:
        raise LakdError(f"unknown CIFAR dataset '{name}'; expected one of {sorted(CIFAR_ARCHIVES)}")
    default_url, default_md5, folder = CIFAR_ARCHIVES[name]
    url = url or default_url
    md5 = (md5 or default_md5).lower()
    root = Path(root).expanduser()
    final = root / folder
    if cifar_python_complete(root, name):
        return final

    root.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=root, prefix=f".{folder}-", suffix=".tar.gz.part")
    archive = Path(tmp_name)
    workdir: Path | None = None
    try:
        try:
            with os.fdopen(fd, "wb") as out:
                _fetch(url, out, progress, desc=f"{name} {url.rsplit('/', 1)[-1]}")
        except urllib.error.HTTPError as exc:
            exc.close()  # it holds the open connection
            raise DownloadError(f"could not download {url}: HTTP {exc.code} {exc.reason}. "
                                f"{_manual_hint(name, url, md5, root)}") from exc
        except (OSError, http.client.HTTPException, ValueError) as exc:
            reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
            raise DownloadError(f"could not download {url}: {type(exc).__name__}: {reason}. "
                                f"{_manual_hint(name, url, md5, root)}") from exc

        got = md5_file(archive)
        if got != md5:
            raise DownloadError(f"MD5 mismatch for {url}: expected {md5}, got {got}. The download is corrupt "
                                "or the file on the server changed; it was deleted — try again, or use a "
                                "known-good copy.")

        workdir = Path(tempfile.mkdtemp(dir=root, prefix=f".{folder}-extract-"))
        _safe_extract(archive, workdir, url)
        if not cifar_python_complete(workdir, name):
            missing = [f for f in cifar_python_files(name) if not (workdir / folder / f).is_file()]
            raise DownloadError(f"archive from {url} does not contain the official layout: missing "
                                f"{', '.join(f'{folder}/{f}' for f in missing)}")
        _install(workdir / folder, final, workdir, name)
    finally:
        archive.unlink(missing_ok=True)
        if workdir is not None:
            shutil.rmtree(workdir, ignore_errors=True)
    return final


def _install(extracted: Path, final: Path, workdir: Path, name: str) -> None:
    """Atomically rename ``extracted`` to ``final``; an incomplete old copy is moved into ``workdir``."""
    if final.exists() or final.is_symlink():
        if cifar_python_complete(final.parent, name):
            return  # another process finished first; keep its copy
        warnings.warn(f"{final} was incomplete; replacing it with the freshly downloaded copy", stacklevel=3)
        os.replace(final, workdir / ".incomplete-old-copy")
    os.replace(extracted, final)
