"""Reproduce the paper's tables for a zoo model: convert with its preset, compare side by side.

:func:`reproduce` fetches the zoo weights when they are missing (SHA1
checked), converts with the paper's preset (VBMF ranks, or the paper's own
ranks with ``paper_ranks=True``), and :func:`compare_with_paper` lines our
per-layer ranks, weights and FLOPs up with the printed Tables 2-5 and our
totals with Table 1.

Another paper's figures for the same net live in the zoo model's
``methods`` map (VGG-16: ``btd``, Wang & Cheng's configuration): with
``method="btd"`` the preset's layers are compressed with that method (its
paper's ranks with ``paper_ranks=True``) and compared with that paper's
ranks and totals (convolution multiply-adds and their ratio, whole-net ratio).
"""

from __future__ import annotations

import re
from pathlib import Path

from caffe_tucker.analysis.cost import analyze
from caffe_tucker.compress.convert import ConvertOptions, ConvertResult, convert, write_outputs
from caffe_tucker.compress.methods import get_method
from caffe_tucker.compress.record import CompressionRecord
from caffe_tucker.errors import CaffeTuckerError
from caffe_tucker.zoo import fetch, zoo_model

__all__ = ["paper_ranks", "paper_of", "printed_value", "agrees", "compare_with_paper", "reproduce",
           "conv_flops"]


def paper_of(meta: dict, method: str | None = None) -> dict | None:
    """The printed figures to compare with: the zoo model's ``paper`` (Kim et al.), or with
    ``method`` its ``methods[method]["paper"]``; an error naming what there is otherwise."""
    if method is None:
        return meta.get("paper")
    entry = (meta.get("methods") or {}).get(method)
    if entry is None:
        known = ", ".join(meta.get("methods") or ()) or "none"
        raise CaffeTuckerError(f"zoo model '{meta['name']}' has no paper figures for method "
                               f"'{method}' (methods with figures: {known})")
    return entry["paper"]


def paper_ranks(meta: dict, method: str | None = None) -> dict:
    """The ranks of the paper's table as a ranks.json mapping (rows without full ranks left out)."""
    out = {}
    for row in (paper_of(meta, method) or {}).get("layers", []):
        ranks = row["ranks"] if isinstance(row["ranks"], list) else [row["ranks"]]
        if None in ranks:
            continue
        out[row["layer"]] = get_method(row["method"]).ranks_file_value(ranks)
    return out


def conv_flops(result: ConvertResult) -> tuple[int, int]:
    """Kernel multiply-adds of the Convolution layers, before and after."""
    def total(net, shapes):
        return sum(r.flops for r in analyze(net, shapes).layers if r.type == "Convolution")

    return (total(result.original.net, result.original.shapes),
            total(result.compressed, result.compressed_shapes))


def printed_value(text: str) -> tuple[float, float] | None:
    """'75.0M' -> (75e6, 1e5): the printed value and one unit of its last digit; None if unreadable."""
    m = re.fullmatch(r"(\d+(?:\.(\d+))?)([KMG]?)", str(text).strip())
    if not m:
        return None
    scale = {"": 1, "K": 1e3, "M": 1e6, "G": 1e9}[m.group(3)]
    return float(m.group(1)) * scale, scale * 10 ** -len(m.group(2) or "")


def agrees(ours: float, text: str) -> bool | None:
    """Whether ``ours`` is the printed number to the paper's rounding (or truncation)."""
    p = printed_value(text)
    if p is None:
        return None
    return abs(ours - p[0]) < p[1]


def compare_with_paper(meta: dict, record: CompressionRecord, method: str | None = None,
                       conv: tuple[int, int] | None = None) -> dict:
    """Per-layer and total comparison of a compression record with the paper's tables.

    ``method`` picks another paper's figures (:func:`paper_of`); ``conv`` is the convolutions'
    multiply-adds before and after (:func:`conv_flops`), for a paper that prints those.
    """
    paper = paper_of(meta, method)
    if not paper:
        raise CaffeTuckerError(f"zoo model '{meta['name']}' has no paper tables to compare with")
    ours = {r.name: r for r in record.layers}
    rows = []
    for p in paper["layers"]:
        r = ours.get(p["layer"])
        paper_r = p["ranks"] if isinstance(p["ranks"], list) else [p["ranks"]]
        row = {"layer": p["layer"], "paper_name": p["paper_name"], "method": p["method"],
               "paper_ranks": paper_r, "ranks": None, "weights_before": None,
               "paper_weights": p["weights"] or "", "flops_before": None,
               "paper_flops": p["flops"] or "", "weights_after": None,
               "paper_weights_after": p["weights_after"] or "", "flops_after": None,
               "paper_flops_after": p["flops_after"] or "", "note": None}
        if r is not None:
            compressed = r.compressed
            row.update(ranks=list(r.ranks) if compressed else None,
                       weights_before=r.weights_before, flops_before=r.flops_before,
                       weights_after=r.weights_after if compressed else None,
                       flops_after=r.flops_after if compressed else None,
                       note=None if compressed else r.skipped_reason)
            row["ranks_match"] = compressed and list(r.ranks) == paper_r
            row["weights_after_agrees"] = agrees(r.weights_after, p["weights_after"]) if compressed else None
            row["flops_after_agrees"] = agrees(r.flops_after, p["flops_after"]) if compressed else None
        rows.append(row)
    t = record.total
    if "table1" not in paper:
        return {"model": meta["name"], "layers": rows, "total": _other_totals(paper, t, conv),
                "errata": paper.get("errata", [])}
    table1 = paper["table1"]
    totals = {
        "weights_before": t.weights_before, "paper_weights_before": table1["original"]["weights"],
        "flops_before": t.flops_before + t.bias_flops_before,
        "paper_flops_before": table1["original"]["flops"],
        "weights_after": t.weights_after, "paper_weights_after": table1["compressed"]["weights"],
        "flops_after": t.flops_after + t.bias_flops_after,
        "paper_flops_after": table1["compressed"]["flops"],
        "weights_ratio": t.weights_ratio,
        "paper_weights_ratio": table1["ratios"]["weights"],
        "flops_ratio": t.flops_ratio,
        "paper_flops_ratio": table1["ratios"]["flops"],
    }
    return {"model": meta["name"], "layers": rows, "total": totals,
            "errata": paper.get("errata", [])}


def _other_totals(paper: dict, t, conv) -> dict:
    """Totals for a paper that prints convolution multiply-adds and ratios (``totals``)."""
    printed = paper.get("totals") or {}
    before, after = conv if conv is not None else (None, None)
    return {"weights_before": t.weights_before, "weights_after": t.weights_after,
            "weights_ratio": t.weights_ratio,
            "conv_flops_before": before, "paper_conv_flops_before": printed.get("conv_flops_before"),
            "conv_flops_after": after, "paper_conv_flops_after": printed.get("conv_flops_after"),
            "conv_flops_ratio": before / after if before and after else None,
            "paper_conv_flops_ratio": printed.get("conv_flops_ratio"),
            "flops_ratio": t.flops_ratio, "paper_flops_ratio": printed.get("flops_ratio")}


def reproduce(name: str, weights=None, paper_ranks_only: bool = False, out_dir=None,
              force: bool = False, progress: bool = True,
              method: str | None = None) -> tuple[ConvertResult, dict, Path]:
    """Fetch (if needed), convert with the paper's preset, compare; returns (result, comparison, out).

    ``method`` (e.g. ``"btd"``): compress the preset's layers with that method and compare with
    its paper's figures in the zoo model's ``methods`` map.
    """
    meta = zoo_model(name)
    if not meta.get("paper"):
        raise CaffeTuckerError(f"zoo model '{name}' is not one of the paper's; reproduce takes "
                               "alexnet, vgg_s, googlenet or vgg16")
    paper = paper_of(meta, method)
    if method is not None:
        get_method(method, "reproduce")
    if weights is None:
        weights = fetch(name)
    options = ConvertOptions(preset=name, method=method,
                             ranks=paper_ranks(meta, method) if paper_ranks_only else None,
                             ranks_source=f"the paper's {paper['table']}")
    result = convert(meta["deploy_path"], weights, options, progress=progress)
    out = Path(out_dir) if out_dir else Path(f"{name}_tucker")
    write_outputs(result, out, force=force, inputs=[meta["deploy_path"], weights])
    return result, compare_with_paper(meta, result.record, method, conv_flops(result)), out
