"""Rendering of reports: aligned text tables, Markdown, CSV and JSON.

Every report of the tool is a list of columns and rows of plain values;
this module turns them into the four output formats, so the stages never
format text themselves.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from typing import Callable, Sequence

__all__ = ["Column", "human", "render", "FORMATS", "dumps_json", "info_columns", "ranks_columns",
           "verify_columns", "bench_columns", "reproduce_columns", "sparsify_columns",
           "measure_columns", "quantize_columns"]

FORMATS = ("table", "markdown", "csv", "json")


def human(n: float | int | None, digits: int = 3) -> str:
    """Paper-style magnitude: 34848 -> '34.8K', 105415200 -> '105M', 0 -> '0'."""
    if n is None:
        return "?"
    if n == 0:
        return "0"
    for scale, unit in ((1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= scale:
            v = n / scale
            text = f"{v:.{max(digits - len(str(int(abs(v)))), 0)}f}"
            return text + unit
    return str(int(n)) if float(n).is_integer() else f"{n:.3g}"


@dataclass(frozen=True)
class Column:
    """A report column: header, how to get the raw value, how to show it in text."""

    header: str
    key: str
    text: Callable = str
    align: str = "<"


def _cell(col: Column, row: dict) -> str:
    value = row.get(col.key)
    return col.text(value)


def render(columns: Sequence[Column], rows: Sequence[dict], fmt: str, footer: dict | None = None,
           payload: dict | None = None) -> str:
    """Render rows (dicts) in ``fmt``: table, markdown, csv, or json (``payload`` as is)."""
    if fmt == "json":
        return dumps_json(payload if payload is not None else {"rows": list(rows)})
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow([c.key for c in columns])
        for row in list(rows) + ([footer] if footer else []):
            writer.writerow([_csv_value(row.get(c.key)) for c in columns])
        return buf.getvalue()
    cells = [[_cell(c, r) for c in columns] for r in rows]
    foot = [_cell(c, footer) if c.key in footer else "" for c in columns] if footer else None
    if fmt == "markdown":
        lines = ["| " + " | ".join(c.header for c in columns) + " |",
                 "|" + "|".join(("---:" if c.align == ">" else "---") for c in columns) + "|"]
        for r in cells + ([foot] if foot else []):
            lines.append("| " + " | ".join(v.replace("|", "\\|") for v in r) + " |")
        return "\n".join(lines) + "\n"
    if fmt == "table":
        widths = [max([len(c.header)] + [len(r[i]) for r in cells + ([foot] if foot else [])])
                  for i, c in enumerate(columns)]

        def line(values):
            return "  ".join(f"{v:{c.align}{w}}" for v, c, w in zip(values, columns, widths)).rstrip()

        out = [line([c.header for c in columns]), line(["-" * w for w in widths])]
        out += [line(r) for r in cells]
        if foot:
            out += [line(["-" * w for w in widths]), line(foot)]
        return "\n".join(out) + "\n"
    raise ValueError(f"The 'format' parameter of render must be one of {FORMATS}. Got {fmt!r} instead.")


def _csv_value(v):
    if v is None:
        return ""
    if isinstance(v, (list, tuple)):
        return "x".join(str(x) for x in v)
    return v


def dumps_json(obj) -> str:
    """JSON with a stable layout (2-space indent, keys in insertion order, newline at end)."""
    return json.dumps(obj, indent=2, ensure_ascii=False) + "\n"


def _dims(v) -> str:
    return "x".join(str(d) for d in v) if v else ""


def _shape_hw(v) -> str:
    if not v:
        return "?" if v is None else ""
    return "x".join(str(d) for d in v[2:]) if len(v) > 2 else _dims(v[1:])


def _opt(v) -> str:
    return "" if v is None else str(v)


def _num(v) -> str:
    return "" if not v else human(v)


def info_columns() -> list[Column]:
    """Columns of the ``info`` report."""
    return [
        Column("layer", "name"), Column("type", "type"),
        Column("S", "in_channels", _opt, ">"), Column("T", "out_channels", _opt, ">"),
        Column("kernel", "kernel", _dims), Column("stride", "stride", _dims),
        Column("pad", "pad", _dims), Column("group", "group", _opt, ">"),
        Column("output", "output_shape", _shape_hw, ">"),
        Column("weights", "weights", _num, ">"), Column("bias", "bias", _num, ">"),
        Column("FLOPs", "flops", _num, ">"),
    ]



def _joined(v) -> str:
    return "/".join(map(str, v))


def ranks_columns() -> list[Column]:
    """Columns of the ``ranks`` report (one row per planned layer)."""
    return [Column("layer", "layer"), Column("method", "method"), Column("ranks", "ranks", _joined),
            Column("per group", "groups"), Column("full", "full", _joined),
            Column("weights after", "weights", human, ">"), Column("FLOPs after", "flops", human, ">"),
            Column("status", "status")]


def _g3(v) -> str:
    return "" if v is None else f"{v:.3g}"


def _percent(v) -> str:
    return "" if v is None else f"{100 * v:.1f}%"


def verify_columns() -> list[Column]:
    """Columns of the ``verify`` report (one row per check and output blob)."""
    return [Column("check", "check"), Column("blob", "blob", _or_blank),
            Column("max abs", "max_abs", _g3, ">"), Column("max rel", "max_rel", _g3, ">"),
            Column("top-1 agree", "top1_agreement", _percent, ">"),
            Column("top-5 agree", "top5_agreement", _percent, ">"), Column("result", "result")]


def _or_blank(v) -> str:
    return v or ""


def _fixed2(v) -> str:
    return "" if v is None else f"{v:.2f}"


def _times(v) -> str:
    return "" if v is None else f"x{v:.2f}"


def _parts(v) -> str:
    return "(=" + "+".join(f"{p:.2f}" for p in v) + ")" if v else ""


def bench_columns() -> list[Column]:
    """Columns of the ``bench`` report (one row per original layer, footer: the whole net,
    the only row with a speed-up ceiling and the fraction of it realized)."""
    return [Column("layer", "name"), Column("method", "method", _or_blank),
            Column("original ms", "original_ms", _fixed2, ">"),
            Column("compressed ms", "compressed_ms", _fixed2, ">"),
            Column("(= parts)", "parts_ms", _parts),
            Column("speed-up", "speedup", _times, ">"), Column("FLOPs ratio", "theoretical", _times, ">"),
            Column("quotient", "quotient", _fixed2, ">"),
            Column("ceiling", "ceiling", _times, ">"), Column("of ceiling", "realized", _fixed2, ">")]


def _ranks_or_unknown(v) -> str:
    return "" if not v else "/".join("?" if x is None else str(x) for x in v)


def _human_or_blank(v) -> str:
    return "" if v is None else human(v)


def reproduce_columns() -> list[Column]:
    """Columns of the ``reproduce`` report: ours beside the paper's (``*`` = compressed)."""
    return [Column("layer", "layer"), Column("paper", "paper_name"), Column("method", "method"),
            Column("ranks", "ranks", _ranks_or_unknown, ">"),
            Column("paper ranks", "paper_ranks", _ranks_or_unknown, ">"),
            Column("weights", "weights_before", _human_or_blank, ">"),
            Column("paper", "paper_weights", str, ">"),
            Column("weights*", "weights_after", _human_or_blank, ">"),
            Column("paper*", "paper_weights_after", str, ">"),
            Column("FLOPs*", "flops_after", _human_or_blank, ">"),
            Column("paper*", "paper_flops_after", str, ">"),
            Column("note", "note", _or_blank)]




def _share(v) -> str:
    return "" if v is None else f"{100 * v:.1f}%"


def sparsify_columns() -> list[Column]:
    """Columns of the ``sparsify`` report (one row per sparsified layer; footer: the totals)."""
    return [Column("layer", "name"), Column("type", "type"),
            Column("winograd", "winograd", lambda v: "yes" if v else "no"),
            Column("spatial zeros", "spatial_sparsity", _share, ">"),
            Column("Winograd zeros (G g G^T)", "winograd_natural", _share, ">"),
            Column("Winograd zeros (deployed)", "winograd_sparsity", _share, ">"),
            Column("mults dense", "spatial_dense", _human_or_blank, ">"),
            Column("spatial sparse", "spatial_sparse", _human_or_blank, ">"),
            Column("Winograd dense", "winograd_dense", _human_or_blank, ">"),
            Column("Winograd sparse", "winograd_sparse", _human_or_blank, ">"),
            Column("why spatial only", "reason", _or_blank)]


def measure_columns() -> list[Column]:
    """Columns of ``sparsify``'s measures (one row per model, measured in Caffe)."""
    return [Column("model", "stage"), Column("measure", "metric"),
            Column("value", "shown", str, ">")]


def _bits(v) -> str:
    return "" if v is None else f"{v:.2f}"


def quantize_columns() -> list[Column]:
    """Columns of the ``quantize`` report (one row per quantized blob)."""
    return [Column("layer", "layer"), Column("method", "method"),
            Column("weights", "weights", _human_or_blank, ">"),
            Column("non-zero", "nonzero", _human_or_blank, ">"),
            Column("levels", "levels", str, ">"), Column("step", "step", _g3, ">"),
            Column("rel. error", "rel_error", _g3, ">"),
            Column("entropy bits", "entropy", _bits, ">"),
            Column("coded bytes", "coded_bytes", str, ">"),
            Column("bits/weight", "bits_per_weight", _bits, ">"),
            Column("bits/non-zero", "bits_per_nonzero", _bits, ">")]


def profile_table(profile, keys=None) -> str:
    """``profile``'s table of fits: kind, grid points, a (ms), b (µs per channel), c (ms per
    GMAC), residual; only the kinds in ``keys`` when given."""
    rows = [("kind", "points", "a ms", "b us/ch", "c ms/GMAC", "residual")]
    for key, (_kind, fit) in sorted(profile.fits.items()):
        if keys is not None and key not in keys:
            continue
        rows.append((key, str(len(fit.points)), f"{fit.a:.4f}", f"{fit.b * 1e3:.3f}",
                     f"{fit.c * 1e9:.2f}", f"{fit.residual:.1%}"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "".join("  ".join(v.ljust(w) if i == 0 else v.rjust(w)
                             for i, (v, w) in enumerate(zip(r, widths))).rstrip() + "\n"
                   for r in rows)
