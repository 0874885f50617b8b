"""Safe file output: atomic replacement, no silent overwrite, inputs protected."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from caffe_tucker.errors import InputFileError, OutputExistsError

__all__ = ["write_atomic", "check_output", "read_bytes", "check_out_dir", "write_directory"]


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


def check_out_dir(out, force: bool = False, inputs: Sequence = ()) -> Path:
    """Refuse an output directory that is a file, is not empty (without ``force``), or holds an input."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"{out}: exists and is not a directory; hint: choose another "
                                "output directory")
    if out.is_dir():
        resolved = out.resolve()
        for inp in inputs:
            if inp is None:
                continue
            p = Path(inp).resolve()
            if p == resolved or resolved in p.parents:
                raise OutputExistsError(f"{out}: holds the input {inp}, which replacing the "
                                        "directory would delete; hint: choose another output "
                                        "directory (or copy the input elsewhere first)")
        if any(out.iterdir()) and not force:
            raise OutputExistsError(f"{out}: directory exists and is not empty; hint: pass --force "
                                    "to replace it")
    return out


def _write_file(path: Path, contents) -> None:
    if isinstance(contents, (bytes, bytearray, memoryview, str)):
        contents = [contents]
    with open(path, "wb") as fh:
        for chunk in contents:
            fh.write(chunk.encode("utf-8") if isinstance(chunk, str) else chunk)
        fh.flush()
        os.fsync(fh.fileno())
    os.chmod(path, 0o644)


def write_directory(out, files: Mapping[str, object], force: bool = False,
                    inputs: Sequence = ()) -> list[Path]:
    """Write a whole output directory atomically: all of ``files`` or none of them.

    The files (name -> str, bytes or an iterable of byte chunks) are written
    into a temporary sibling directory, which then takes the place of ``out``
    (an existing ``out`` is moved aside first and deleted last).  A reader, or
    an interrupted run, sees the old directory or the new one, never a mix.

    Raises
    ------
    OutputExistsError
        ``out`` is a file, a non-empty directory without ``force``, or holds an input.
    """
    out = check_out_dir(out, force, inputs)
    parent = out.parent if str(out.parent) else Path(".")
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=parent))
    old = None
    try:
        for name, contents in files.items():
            _write_file(tmp / name, contents)
        os.chmod(tmp, 0o755)
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=parent))
            os.rmdir(old)
            os.replace(out, old)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and old.exists() and not out.exists():
            os.replace(old, out)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return [out / name for name in files]
