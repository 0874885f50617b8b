"""Caffe's training log (``caffe train``'s glog output) as events, rows and CSV.

:func:`parse_log_line` turns one log line into an event; :class:`TrainLog` follows a whole log,
line by line, into one row per iteration (``iteration, lr, loss, test_accuracy``) plus the
snapshots Caffe wrote and whether it finished; :func:`csv_text` and :func:`read_csv` write and
read those rows (``finetune.csv``).
"""

from __future__ import annotations

import csv
import io
import math
import re
from pathlib import Path

__all__ = ["CSV_COLUMNS", "TrainLog", "accuracy_rank", "csv_text", "parse_log_line", "read_csv"]

CSV_COLUMNS = ("iteration", "lr", "loss", "test_accuracy")

_NUM = r"([-+]?(?:nan|inf|[0-9.]+(?:[eE][-+]?[0-9]+)?))"
_LOSS = re.compile(r"\] Iteration (\d+)(?: \([^)]*\))?, loss = " + _NUM)
_LR = re.compile(r"\] Iteration (\d+), lr = " + _NUM)
_TESTING = re.compile(r"\] Iteration (\d+), Testing net \(#(\d+)\)")
_TEST_OUT = re.compile(r"\]\s+Test net output #(\d+): (\S+) = " + _NUM)
_SNAPSHOT = re.compile(r"\] Snapshotting (?:solver state )?to (?:binary proto|HDF5) file (\S+)")
_SNAPSHOT_ITER = re.compile(r"_iter_(\d+)\.(?:caffemodel|solverstate)(?:\.h5)?$")
_DONE = re.compile(r"\] Optimization Done\.")


def parse_log_line(line: str) -> tuple | None:
    """One Caffe log line as an event, or None:

    ``("loss", it, value)``, ``("lr", it, value)``, ``("testing", it, net)``,
    ``("test_output", index, name, value)``, ``("snapshot", path)``, ``("done",)``.
    """
    if "] " not in line:
        return None
    if m := _LOSS.search(line):
        return ("loss", int(m.group(1)), float(m.group(2)))
    if m := _LR.search(line):
        return ("lr", int(m.group(1)), float(m.group(2)))
    if m := _TESTING.search(line):
        return ("testing", int(m.group(1)), int(m.group(2)))
    if m := _TEST_OUT.search(line):
        return ("test_output", int(m.group(1)), m.group(2), float(m.group(3)))
    if m := _SNAPSHOT.search(line):
        return ("snapshot", m.group(1))
    if _DONE.search(line):
        return ("done",)
    return None


def accuracy_rank(name: str) -> int:
    """How well a test output's name says "the" (top-1) accuracy: lower is better, 99 is not an
    accuracy at all."""
    low = name.lower()
    if "acc" not in low:
        return 99
    if re.search(r"top[-_]?(5|[2-9]|\d\d)", low):
        return 50
    return 0 if re.search(r"top[-_]?1\b|top[-_]?1$", low) or low == "accuracy" else 1


def _row(it: int) -> dict:
    return {"iteration": it, "lr": None, "loss": None, "test_accuracy": None}


class TrainLog:
    """A ``caffe train`` log followed line by line (:meth:`feed`).

    Parameters
    ----------
    rows : dict of int to dict, optional
        Rows to continue (a resumed run keeps the earlier rows up to where it resumes).

    Attributes
    ----------
    rows : dict of int to dict
        ``{iteration: {"iteration", "lr", "loss", "test_accuracy"}}``; a value is None where the
        log did not say it.  Accuracy is of test net #0, from the output :func:`accuracy_rank`
        prefers.
    snapshots : list of str
        The files Caffe snapshotted to (weights and solver states), as it printed them.
    done : bool
        Caffe printed ``Optimization Done.``.
    last_iter, last_loss, last_accuracy
        The latest iteration (displayed, tested or snapshotted), training loss and test accuracy
        seen (None before any).
    accuracy_name : str or None
        Which test output is taken as the accuracy.
    """

    def __init__(self, rows: dict[int, dict] | None = None):
        self.rows: dict[int, dict] = dict(rows or {})
        self.testing: tuple[int, int] | None = None  # (iteration, net) of the test being printed
        self.snapshots: list[str] = []
        self.done = False
        self.last_iter: int | None = None
        self.accuracy_name: str | None = None
        self.last_loss: float | None = None
        self.last_accuracy: float | None = None

    def row(self, it: int) -> dict:
        """The row of iteration ``it`` (made empty when new)."""
        return self.rows.setdefault(it, _row(it))

    def sorted_rows(self) -> list[dict]:
        """The rows by iteration."""
        return [self.rows[k] for k in sorted(self.rows)]

    def feed(self, line: str) -> None:
        """Take one log line into account."""
        event = parse_log_line(line)
        if event is None:
            return
        kind = event[0]
        if kind == "loss":
            self.row(event[1])["loss"] = event[2]
            self.last_loss = event[2]
            self.last_iter = event[1]
            self.testing = None
        elif kind == "lr":
            self.row(event[1])["lr"] = event[2]
            self.last_iter = event[1]
            self.testing = None
        elif kind == "testing":
            self.testing = (event[1], event[2])
            self.last_iter = event[1]
        elif kind == "test_output":
            if self.testing is None or self.testing[1] != 0:
                return
            name, value = event[2], event[3]
            current = 99 if self.accuracy_name is None else accuracy_rank(self.accuracy_name)
            if accuracy_rank(name) < current:
                self.accuracy_name = name
            if name == self.accuracy_name:
                self.row(self.testing[0])["test_accuracy"] = value
                self.last_accuracy = value
        elif kind == "snapshot":
            self.snapshots.append(event[1])
            # Caffe names snapshots after their iteration; the last one may be later than the
            # last iteration it displayed
            m = _SNAPSHOT_ITER.search(event[1])
            if m and (self.last_iter is None or int(m.group(1)) > self.last_iter):
                self.last_iter = int(m.group(1))
        elif kind == "done":
            self.done = True


def _fmt(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return repr(v) if isinstance(v, float) else str(v)


def csv_text(rows: list[dict]) -> str:
    """The rows as CSV text with the header :data:`CSV_COLUMNS` (None as an empty field)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_COLUMNS)
    for r in rows:
        w.writerow([r["iteration"], *(_fmt(r[k]) for k in CSV_COLUMNS[1:])])
    return buf.getvalue()


def read_csv(path) -> dict[int, dict]:
    """The rows of a CSV :func:`csv_text` wrote, by iteration; empty when it is missing or
    unreadable."""
    rows: dict[int, dict] = {}
    try:
        with open(Path(path), newline="", encoding="utf-8") as fh:
            for rec in csv.DictReader(fh):
                it = int(rec["iteration"])
                rows[it] = {"iteration": it, **{k: float(rec[k]) if rec.get(k) else None
                                                for k in CSV_COLUMNS[1:]}}
    except (OSError, KeyError, ValueError):
        return {}
    return rows
