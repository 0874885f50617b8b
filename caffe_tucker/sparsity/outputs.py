"""The files ``sparsify`` writes, as one directory (all of them or none).

=====================  ============================================================================
``deploy.prototxt``    the deploy net (as read, current schema)
``sparse.caffemodel``  its sparse weights: a plain Caffe file, the zeros stored
``winograd.prototxt``  the same net with every stride-1 3x3 convolution in the three-layer
                       Winograd form (stock Caffe layers)
``winograd.caffemodel``its weights: the Winograd-domain filters pruned to the Winograd target
``sparsify.json``      the record (:mod:`caffe_tucker.sparsity.record`)
``layers.csv``         the per-layer table
``training.csv``       one row per iteration: phase, loss, coefficients, small-weight energy, zeros
``sparsify.png``       the curves and the per-layer sparsity
=====================  ============================================================================
"""

from __future__ import annotations

import csv
import io

from caffe_tucker.io.emit import caffemodel_chunks, prototxt_text
from caffe_tucker.io.fsutil import write_directory
from caffe_tucker.report.tables import dumps_json, render, sparsify_columns
from caffe_tucker.sparsity.schedule import TrainRow

__all__ = ["output_files", "write_outputs", "OUTPUTS"]

OUTPUTS = ("deploy.prototxt", "sparse.caffemodel", "winograd.prototxt", "winograd.caffemodel",
           "sparsify.json", "layers.csv", "training.csv", "sparsify.png")


def training_csv(rows) -> str:
    buf = io.StringIO()
    fields = list(TrainRow.__dataclass_fields__)
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(fields)
    for r in rows:
        writer.writerow(["" if getattr(r, f) is None else (f"{getattr(r, f):.9g}"
                         if isinstance(getattr(r, f), float) else getattr(r, f)) for f in fields])
    return buf.getvalue()


def output_files(run, record, plot: bool = True) -> dict:
    """Name -> contents of every output file (see the module docstring)."""
    files = {
        "deploy.prototxt": prototxt_text(run.deploy),
        "sparse.caffemodel": caffemodel_chunks(run.deploy),
        "winograd.prototxt": prototxt_text(run.winograd, header_comment=(
            "Winograd form written by caffe_tucker sparsify: each stride-1 3x3 convolution is "
            f"Convolution (B^T x B^T, fixed) -> Convolution 1x1 group (the {record.tile} "
            "Winograd-domain\nfilters, pruned) -> Deconvolution (A^T x A^T, fixed, the bias) "
            "[-> Crop]")),
        "winograd.caffemodel": caffemodel_chunks(run.winograd),
        "sparsify.json": dumps_json(record.to_dict()),
        "layers.csv": render(sparsify_columns(), record.rows(), "csv"),
        "training.csv": training_csv(run.rows),
    }
    if plot:
        from caffe_tucker.report.plots import sparsify_png

        files["sparsify.png"] = sparsify_png(run.rows, record)
    return files


def write_outputs(run, record, out, force: bool = False, plot: bool = True, inputs=()):
    return write_directory(out, output_files(run, record, plot), force=force, inputs=inputs)
