"""Safe file output: atomic replacement, no silent overwrite, inputs protected."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Iterable, Sequence

from caffe_tucker.errors import InputFileError, OutputExistsError

__all__ = ["write_atomic", "check_output", "read_bytes"]


def read_bytes(path, what: str = "file") -> bytes:
    """Read a whole input file, turning OS errors into one-line messages."""
    p = Path(path)
    try:
        return p.read_bytes()
    except FileNotFoundError:
        raise InputFileError(f"{p}: no such {what}; hint: check the path") from None
    except IsADirectoryError:
        raise InputFileError(f"{p}: is a directory, expected a {what}") from None
    except PermissionError:
        raise InputFileError(f"{p}: permission denied reading the {what}") from None


def check_output(path, force: bool = False, inputs: Sequence = ()) -> Path:
    """Refuse to write ``path`` over an input, or over an existing file without ``force``."""
    p = Path(path)
    for inp in inputs:
        if inp is None:
            continue
        try:
            same = p.exists() and os.path.samefile(p, inp)
        except OSError:
            same = False
        if same or p.resolve() == Path(inp).resolve():
            raise OutputExistsError(f"{p}: refusing to write over the input file {inp}; "
                                    "hint: choose another output path")
    if p.exists() and not force:
        raise OutputExistsError(f"{p}: already exists; hint: pass --force to replace it")
    if p.exists() and p.is_dir():
        raise OutputExistsError(f"{p}: is a directory, expected a file path")
    return p


def write_atomic(path, chunks: Iterable, force: bool = False, inputs: Sequence = ()) -> Path:
    """Write ``chunks`` (bytes-like or str) to ``path`` atomically.

    The data goes to a temporary file in the same directory, is flushed to
    disk, then renamed over ``path``: a reader never sees a half-written
    file, and an interrupted write leaves the old file (or nothing).
    """
    p = check_output(path, force=force, inputs=inputs)
    if isinstance(chunks, (bytes, bytearray, memoryview, str)):
        chunks = [chunks]
    parent = p.parent if str(p.parent) else Path(".")
    parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            for chunk in chunks:
                fh.write(chunk.encode("utf-8") if isinstance(chunk, str) else chunk)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, p)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return p
