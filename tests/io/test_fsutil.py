"""Output directories are written as a whole: all new files, or the old directory untouched;
an output location the system refuses is one error naming the path and the reason, found before
the work where it can be."""

import errno
import os

import pytest

from caffe_tucker.errors import InputFileError, OutputExistsError
from caffe_tucker.io import fsutil
from caffe_tucker.io.fsutil import (OutputLocationError, check_out_dir, check_output,
                                    check_writable, input_size, read_bytes, write_atomic,
                                    write_directory)


def _listing(d):
    return {p.name: p.read_bytes() for p in d.iterdir()}


def test_new_directory_is_written_whole(tmp_path):
    out = tmp_path / "out"
    paths = write_directory(out, {"a.txt": "x", "b.bin": [b"1", b"2"]})
    assert _listing(out) == {"a.txt": b"x", "b.bin": b"12"} and paths == [out / "a.txt", out / "b.bin"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]          # no temporary left behind


def test_existing_directory_needs_force_and_is_replaced_whole(tmp_path):
    out = tmp_path / "out"
    write_directory(out, {"a.txt": "old", "stale.txt": "old"})
    with pytest.raises(OutputExistsError, match="--force"):
        write_directory(out, {"a.txt": "new"})
    write_directory(out, {"a.txt": "new"}, force=True)
    assert _listing(out) == {"a.txt": b"new"}
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_a_failure_while_writing_leaves_the_old_directory(tmp_path):
    out = tmp_path / "out"
    write_directory(out, {"a.txt": "old"})

    def chunks():
        yield b"partial"
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_directory(out, {"a.txt": "new", "b.bin": chunks()}, force=True)
    assert _listing(out) == {"a.txt": b"old"}
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_refuses_a_file_and_a_directory_holding_an_input(tmp_path):
    (tmp_path / "f").write_text("")
    with pytest.raises(OutputExistsError, match="not a directory"):
        write_directory(tmp_path / "f", {"a": ""})
    out = tmp_path / "out"
    write_directory(out, {"in.prototxt": "x"})
    with pytest.raises(OutputExistsError, match="holds the input"):
        write_directory(out, {"a": ""}, force=True, inputs=[out / "in.prototxt", None])
    assert _listing(out) == {"in.prototxt": b"x"}


def test_a_location_under_a_regular_file_is_refused_before_writing(tmp_path):
    # A path through a regular file fails for root too (permission bits would not).
    (tmp_path / "file.txt").write_text("x")
    for path in (tmp_path / "file.txt" / "out", tmp_path / "file.txt" / "new" / "deeper" / "out"):
        with pytest.raises(OutputLocationError, match="not a directory"):
            check_writable(path)
        with pytest.raises(OutputLocationError, match=str(path)):
            check_output(path)
        with pytest.raises(OutputLocationError):
            check_out_dir(path)
        with pytest.raises(OutputLocationError):
            write_atomic(path, b"data")
        with pytest.raises(OutputLocationError):
            write_directory(path, {"a": "x"})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.txt"]


def test_checking_a_missing_directory_creates_nothing(tmp_path):
    assert check_writable(tmp_path / "a" / "b" / "out") == tmp_path / "a" / "b" / "out"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("err, words", [(errno.ENOSPC, "no space left"),
                                        (errno.EROFS, "read-only file system"),
                                        (errno.EACCES, "permission denied"),
                                        (errno.EIO, "Input/output error")])
def test_a_refused_write_is_one_error_and_leaves_no_temporary(tmp_path, monkeypatch, err, words):
    def refuse(fd):
        raise OSError(err, os.strerror(err))

    (tmp_path / "old.bin").write_bytes(b"old")
    write_directory(tmp_path / "dir", {"a": "old"})
    monkeypatch.setattr(fsutil.os, "fsync", refuse)
    with pytest.raises(OutputLocationError) as info:
        write_atomic(tmp_path / "old.bin", [b"new"], force=True)
    assert str(tmp_path / "old.bin") in str(info.value) and words in str(info.value)
    with pytest.raises(OutputLocationError, match=words):
        write_directory(tmp_path / "dir", {"a": "new"}, force=True)
    assert (tmp_path / "old.bin").read_bytes() == b"old" and _listing(tmp_path / "dir") == {"a": b"old"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir", "old.bin"]


def test_an_oserror_of_the_contents_is_not_blamed_on_the_output(tmp_path):
    def chunks():
        yield b"x"
        raise ConnectionResetError(errno.ECONNRESET, "reset")

    with pytest.raises(RuntimeError, match="producing the contents"):
        write_atomic(tmp_path / "f", chunks())
    assert list(tmp_path.iterdir()) == []


def test_unreadable_inputs_are_one_line(tmp_path):
    (tmp_path / "f").write_text("x")
    cases = [(tmp_path / "missing", "no such net"), (tmp_path, "is a directory"),
             (tmp_path / "f" / "inner", "a part of the path is a file")]
    for path, words in cases:
        for call in (read_bytes, input_size):
            with pytest.raises(InputFileError, match=words):
                call(path, "net")
    assert input_size(tmp_path / "f") == 1
