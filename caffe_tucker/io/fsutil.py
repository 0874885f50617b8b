"""Safe file output: atomic replacement, no silent overwrite, inputs protected.

Every failure of the operating system while reading an input or writing an
output (no such file, no permission, a read-only or full file system, a path
through a file) becomes a one-line :class:`~caffe_tucker.errors.CaffeTuckerError`
naming the path and the reason; :func:`check_writable` lets a command find an
unusable output location before its work rather than after.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
import tempfile
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from caffe_tucker.errors import InputFileError, OutputExistsError, OutputLocationError

__all__ = ["write_atomic", "check_output", "read_bytes", "input_size", "check_out_dir",
           "write_directory", "check_writable", "stage_file", "OutputLocationError"]


# errno -> (reason, hint) for the failures a user can fix by choosing another place.
_WRITE_REASONS = {
    errno.EACCES: ("permission denied", "choose an output location you may write to"),
    errno.EPERM: ("operation not permitted", "choose an output location you may write to"),
    errno.EROFS: ("read-only file system", "choose an output location on a writable file system"),
    errno.ENOSPC: ("no space left on the device", "free some space or choose another location"),
    errno.EDQUOT: ("disk quota exceeded", "free some space or choose another location"),
    errno.ENOTDIR: ("a part of the path is a file, not a directory", "check the output path"),
    errno.EISDIR: ("is a directory", "give a file path"),
    errno.ENAMETOOLONG: ("file name too long", "choose a shorter output path"),
}


def _unwritable(path, exc: OSError) -> OutputLocationError:
    """The one-line error for ``exc``, raised while writing the output ``path``."""
    reason, hint = _WRITE_REASONS.get(exc.errno, (exc.strerror or str(exc),
                                                  "check the output location"))
    return OutputLocationError(f"{path}: cannot write the output ({reason}); hint: {hint}")


def read_bytes(path, what: str = "file", limit: int | None = None) -> bytes:
    """Read a whole input file (at most ``limit`` bytes), turning OS errors into one-line
    messages."""
    p = Path(path)
    try:
        with open(p, "rb") as fh:
            return fh.read(-1 if limit is None else limit)
    except OSError as exc:
        raise _unreadable(p, what, exc) from None


def input_size(path, what: str = "file") -> int | None:
    """The size in bytes of the input file ``path``, or None for a pipe or a device, whose size
    shows only in reading (the same one-line errors as :func:`read_bytes`)."""
    p = Path(path)
    try:
        st = p.stat()
    except OSError as exc:
        raise _unreadable(p, what, exc) from None
    if stat.S_ISDIR(st.st_mode):
        raise _unreadable(p, what, IsADirectoryError(errno.EISDIR, "is a directory"))
    return st.st_size if stat.S_ISREG(st.st_mode) else None


def _unreadable(p: Path, what: str, exc: OSError) -> InputFileError:
    if isinstance(exc, FileNotFoundError):
        return InputFileError(f"{p}: no such {what}; hint: check the path")
    if isinstance(exc, IsADirectoryError):
        return InputFileError(f"{p}: is a directory, expected a {what}; hint: give the file "
                              "inside it")
    if isinstance(exc, PermissionError):
        return InputFileError(f"{p}: permission denied reading the {what}; hint: check the "
                              "file's permissions")
    if isinstance(exc, NotADirectoryError):
        return InputFileError(f"{p}: no such {what} (a part of the path is a file, not a "
                              "directory); hint: check the path")
    return InputFileError(f"{p}: cannot read the {what} ({exc.strerror or exc}); hint: check "
                          "the path")


def check_writable(path) -> Path:
    """Fail now, not after the work, when ``path`` (a file or directory to be created or
    replaced) could not be written.

    Tries what writing will do: creating (and at once removing) a file in the directory that
    would hold ``path``, or in its nearest existing ancestor when that directory is still to be
    made.  A real attempt, not the permission bits, so that it also fails for root on a
    read-only file system or under a path through a regular file.

    Raises
    ------
    OutputLocationError
        The location cannot be written; the message names ``path`` and the reason.
    """
    p = Path(path)
    where = Path(os.path.abspath(p)).parent
    while not where.exists() and where != where.parent:
        where = where.parent
    if not where.is_dir():
        raise _unwritable(p, NotADirectoryError(errno.ENOTDIR, "not a directory"))
    try:
        fd, probe = tempfile.mkstemp(prefix=".caffe-tucker-probe.", dir=where)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise _unwritable(p, exc) from None
    return p


def check_output(path, force: bool = False, inputs: Sequence = ()) -> Path:
    """Refuse to write ``path`` over an input, over an existing file without ``force``, or
    where it cannot be written (:func:`check_writable`): call it before the work too."""
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
    if p.is_dir():
        raise OutputExistsError(f"{p}: is a directory, expected a file path; hint: name a file "
                                "inside it")
    if p.exists() and not force:
        raise OutputExistsError(f"{p}: already exists; hint: pass --force to replace it")
    return check_writable(p)


def write_atomic(path, chunks: Iterable, force: bool = False, inputs: Sequence = ()) -> Path:
    """Write ``chunks`` (bytes-like or str) to ``path`` atomically.

    The data goes to a temporary file in the same directory, is flushed to
    disk, then renamed over ``path``: a reader never sees a half-written
    file, and an interrupted write leaves the old file (or nothing).
    ``chunks`` may be a generator that does work of its own (a download): an
    exception it raises leaves no file, and only the operating system's
    failures to write become :class:`OutputLocationError`.

    Raises
    ------
    OutputExistsError
        ``path`` exists (without ``force``), is a directory, or is an input.
    OutputLocationError
        The operating system refused a write; the old file, if any, is left as it was.
    """
    p = check_output(path, force=force, inputs=inputs)
    tmp = stage_file(p, chunks)
    try:
        os.replace(tmp, p)
    except BaseException as exc:
        _remove(tmp)
        if isinstance(exc, OSError):
            raise _unwritable(p, exc) from None
        raise
    return p


def stage_file(path, chunks) -> Path:
    """Write ``chunks`` to a hidden temporary file beside ``path`` (flushed to disk, mode 0644)
    and return it, for the caller to rename into place; on any failure nothing is left and an
    operating-system refusal is an :class:`OutputLocationError` naming ``path``."""
    p = Path(path)
    parent = p.parent if str(p.parent) else Path(".")
    try:
        parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=parent)
    except OSError as exc:
        raise _unwritable(p, exc) from None
    try:
        _write_chunks(fd, p, chunks)
        os.chmod(tmp, 0o644)
    except BaseException as exc:
        _remove(Path(tmp))
        if isinstance(exc, OSError):
            raise _unwritable(p, exc) from None
        raise
    return Path(tmp)


def _remove(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _write_chunks(fd: int, path: Path, chunks) -> None:
    """Write ``chunks`` (one str/bytes-like, or an iterable of them) to the open ``fd``, flush
    and fsync it, and close it.  An ``OSError`` from the iterable itself is not a write
    failure: it is re-raised as a plain exception so that callers do not blame the output."""
    if isinstance(chunks, (bytes, bytearray, memoryview, str)):
        chunks = [chunks]
    with os.fdopen(fd, "wb") as fh:
        it = iter(chunks)
        while True:
            try:
                chunk = next(it)
            except StopIteration:
                break
            except OSError as exc:
                raise RuntimeError(f"producing the contents of {path} failed: {exc}") from exc
            fh.write(chunk.encode("utf-8") if isinstance(chunk, str) else chunk)
        fh.flush()
        os.fsync(fh.fileno())


def check_out_dir(out, force: bool = False, inputs: Sequence = ()) -> Path:
    """Refuse an output directory that is a file, is not empty (without ``force``), holds an
    input, or cannot be written (:func:`check_writable`): call it before the work too."""
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
    return check_writable(out)


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
    OutputLocationError
        The operating system refused a write (permission, read-only or full file system); the
        old directory, if any, is left as it was and no temporary remains.
    """
    out = check_out_dir(out, force, inputs)
    parent = out.parent if str(out.parent) else Path(".")
    try:
        parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=parent))
    except OSError as exc:
        raise _unwritable(out, exc) from None
    old = None
    try:
        for name, contents in files.items():
            _write_chunks(os.open(tmp / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL),
                          tmp / name, contents)
            os.chmod(tmp / name, 0o644)
        os.chmod(tmp, 0o755)
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=parent))
            os.rmdir(old)
            os.replace(out, old)
        os.replace(tmp, out)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and old.exists() and not out.exists():
            os.replace(old, out)
        if isinstance(exc, OSError):
            raise _unwritable(out, exc) from None
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return [out / name for name in files]
