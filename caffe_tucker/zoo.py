"""The Caffe model zoo nets of the paper: metadata, deploy files, and fetching weights.

Each zoo model is a folder of ``zoo_models/`` holding ``deploy.prototxt`` and
``model.json`` (download URL and SHA1 of the weights, preprocessing, the
paper's fine-tuning batch size, which layers the paper compresses and how,
and the paper's printed numbers).
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import urllib.error
import urllib.request
from pathlib import Path

from caffe_tucker.errors import CaffeTuckerError, InputFileError, OutputExistsError
from caffe_tucker.io.fsutil import check_writable, write_atomic
from caffe_tucker.report.progress import Progress

__all__ = ["zoo_dir", "zoo_names", "zoo_model", "cache_dir", "fetch", "sha1_of"]


def zoo_dir() -> Path:
    """The zoo folder: ``$CAFFE_TUCKER_ZOO``, the source checkout's, or the installed copy."""
    env = os.environ.get("CAFFE_TUCKER_ZOO")
    if env:
        return Path(env)
    here = Path(__file__).resolve().parent
    for candidate in (here.parent / "zoo_models", here / "zoo_models"):
        if candidate.is_dir():
            return candidate
    raise InputFileError("the zoo_models folder is missing from this installation; hint: set "
                         "CAFFE_TUCKER_ZOO to a checkout's zoo_models/")


def zoo_names() -> list[str]:
    return sorted(p.parent.name for p in zoo_dir().glob("*/model.json"))


def zoo_model(name: str) -> dict:
    """The metadata of zoo model ``name`` with ``dir`` and ``deploy_path`` added."""
    path = zoo_dir() / name / "model.json"
    if not path.is_file():
        raise InputFileError(f"unknown zoo model '{name}'; known: {', '.join(zoo_names())}")
    meta = json.loads(path.read_text(encoding="utf-8"))
    meta["dir"] = str(path.parent)
    meta["deploy_path"] = str(path.parent / meta.get("deploy", "deploy.prototxt"))
    return meta


def cache_dir() -> Path:
    """Where fetched weights go: ``$CAFFE_TUCKER_CACHE`` or ``~/.cache/caffe_tucker``."""
    env = os.environ.get("CAFFE_TUCKER_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "caffe_tucker"


def sha1_of(path) -> str:
    h = hashlib.sha1()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fetch(name: str, dest=None, url: str | None = None, force: bool = False) -> Path:
    """Download zoo model ``name``'s weights, verify the SHA1, save atomically.

    An output location that cannot be written is refused before the download.

    A file already at ``dest`` with the right checksum is kept as it is.  A
    download whose checksum differs from the published one is refused and
    deleted; so is an existing file with the wrong checksum, unless ``force``
    lets it be replaced by a fresh download.

    Returns
    -------
    Path
        Where the verified weights are.
    """
    meta = zoo_model(name)
    weights = meta["weights"]
    expected = (weights.get("sha1") or "").lower() or None
    target = Path(dest) if dest else cache_dir() / name / weights["filename"]
    if target.is_dir():
        target = target / weights["filename"]
    if target.exists():
        if expected and sha1_of(target) == expected:
            return target
        if not force:
            raise OutputExistsError(
                f"{target}: already exists and its SHA1 is not the published {expected or '(none published)'}; "
                "hint: pass --force to download it again")
    source = url or weights.get("url")
    if not source:
        bundled = Path(meta["dir"]) / weights["filename"]
        raise CaffeTuckerError(f"zoo model '{name}' has no download URL: its weights come with the "
                               f"checkout ({bundled}); hint: use that file, or pass --url")
    check_writable(target)  # before the download, not after it
    try:
        response = urllib.request.urlopen(source, timeout=60)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise _download_failed(source, exc) from None
    with response:
        # write_atomic leaves no file when the chunks raise: a failed download or a wrong
        # checksum (checked after the last chunk, before the file is moved into place).
        write_atomic(target, _verified_chunks(response, name, source, expected,
                                              weights.get("bytes")), force=True)
    return target


def _download_failed(source: str, exc: Exception) -> CaffeTuckerError:
    return CaffeTuckerError(f"{source}: download failed ({exc}); hint: check the network or pass "
                            "--url with a mirror or a local file:// path")


def _verified_chunks(response, name: str, source: str, expected: str | None, size: int | None):
    """The bytes of ``response`` in chunks, with a progress bar; raises after the last chunk when
    their SHA1 is not ``expected``."""
    length = (response.headers.get("Content-Length") or "").strip()
    total = int(length) if length.isdigit() else size
    h = hashlib.sha1()
    with Progress(total, f"fetch {name}", unit="B") as bar:
        while True:
            try:
                chunk = response.read(1 << 20)
            except (OSError, http.client.HTTPException) as exc:
                raise _download_failed(source, exc) from None
            if not chunk:
                break
            h.update(chunk)
            bar.update(len(chunk))
            yield chunk
    got = h.hexdigest()
    if expected and got != expected:
        raise CaffeTuckerError(
            f"{source}: SHA1 {got} differs from the published {expected} for {name}; the file "
            "was refused and deleted; hint: the download is corrupt or not this model")
