"""``report.md``: a compression record in the paper's Table 2 layout, then Table 1's totals."""

from __future__ import annotations

from caffe_tucker.compress.methods import get_method
from caffe_tucker.compress.record import CompressionRecord
from caffe_tucker.report.tables import human

__all__ = ["convert_markdown"]


def _ratio(before, after) -> str:
    return f"×{before / after:.2f}" if after else "×∞"


def _per_group(value, group) -> str:
    if value is None:
        return ""
    return f"{value // group}×{group}" if group and group > 1 else str(value)


def convert_markdown(record: CompressionRecord) -> str:
    """The report as Markdown: a row per planned layer and one per compressed version of it."""
    how = ([f"solver `{record.vbmf_solver}`"] if record.vbmf_solver else []) + \
        ([f"weaken {record.weaken}"] if record.weaken != 1.0 else [])
    lines = [f"# Compression report: {record.model or 'net'}", "",
             f"Preset `{record.preset}`, ranks by `{record.rank_method}`"
             + (f" ({', '.join(how)})" if how else "")
             + f"; source `{record.source_prototxt}`.", "",
             "| Layer | S/R3 | T/R4 | Weights | FLOPs | rel. error |",
             "|---|---:|---:|---|---|---:|"]
    for r in record.layers:
        g = r.group or 1
        lines.append(f"| {r.name} | {_per_group(r.in_channels, g)} | "
                     f"{_per_group(r.out_channels, g)} | {human(r.weights_before)} | "
                     f"{human(r.flops_before)} | |")
        if not r.compressed:
            lines.append(f"| {r.name}* | | | untouched: {r.skipped_reason} | | |")
            continue
        grouped = (lambda v: "" if v is None else f"{v}×{g}" if g > 1 else str(v))
        # The method says which rank is the input side (S column) and the output side (T column).
        method = get_method(r.method)
        s_side, t_side = method.side_ranks(r.ranks)
        s_r, t_r = grouped(s_side), grouped(t_side)
        w = (f"{human(r.weights_after)} (={'+'.join(human(v) for v in r.weights_parts)}) "
             f"({_ratio(r.weights_before, r.weights_after)})")
        f = (f"{human(r.flops_after)} (={'+'.join(human(v) for v in r.flops_parts)}) "
             f"({_ratio(r.flops_before, r.flops_after)})")
        lines.append(f"| {r.name}* ({method.label(r.ranks)}) | {s_r} | {t_r} | {w} | {f} | "
                     f"{r.rel_error:.4f} |")
    t = record.total
    lines += ["", "Whole net (every layer; FLOPs are kernel multiply-adds, bias additions in brackets):",
              "", "| Model | Weights | FLOPs |", "|---|---:|---:|",
              f"| original | {human(t.weights_before)} | {human(t.flops_before)} "
              f"(+{human(t.bias_flops_before)}) |",
              f"| compressed | {human(t.weights_after)} | {human(t.flops_after)} "
              f"(+{human(t.bias_flops_after)}) |",
              f"| (imp.) | {_ratio(t.weights_before, t.weights_after)} | "
              f"{_ratio(t.flops_before, t.flops_after)} |", ""]
    lines += _policy_lines(record)  # issue 13
    return "\n".join(lines)


def _policy_lines(record: CompressionRecord) -> list[str]:
    """The latency rank policy's decisions (predicted Caffe ms); nothing under ``vbmf``."""
    rows = [r for r in record.layers if r.policy]
    if record.rank_policy == "vbmf" or not rows:
        return []
    lines = [f"Rank policy `{record.rank_policy}` (predicted Caffe CPU ms from the cost profile; "
             "errors from the unfoldings' spectra):", "",
             "| Layer | decision | VBMF | ms | error | chosen | ms | error | original ms |",
             "|---|---|---|---:|---:|---|---:|---:|---:|"]
    for r in rows:
        p = r.policy
        vbmf = f"{p.vbmf_method} {list(p.vbmf_ranks)}"
        chosen = "original" if p.decision == "original" else f"{p.method} {list(p.ranks)}"
        lines.append(f"| {r.name} | {p.decision} | {vbmf} | {p.vbmf_ms:.3f} | "
                     f"{p.vbmf_error:.4f} | {chosen} | {p.chosen_ms:.3f} | "
                     f"{p.chosen_error:.4f} | {p.original_ms:.3f} |")
    return lines + [""]
