"""Output directories are written as a whole: all new files, or the old directory untouched."""

import pytest

from caffe_tucker.errors import OutputExistsError
from caffe_tucker.io.fsutil import write_directory


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
