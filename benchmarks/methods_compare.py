"""Benchmark: Tucker-2, BTD (N = 2, 4) and CP at equal multiply-adds, on the real models.

    OPENBLAS_NUM_THREADS=1 CAFFE_TUCKER_PYTHON="chroot /opt/caffe-root python3" \\
        python benchmarks/methods_compare.py [--budgets 2,4,8,16] [--budget 4] [--accuracy-budgets 4,16,32,64]
                                         [--batch 8] [--png FILE] [--json FILE] [--no-caffe]
                                         [--models digits,cifar10_quick,resnet20]

For each model (the bundled digits net, cifar10_quick and ResNet-20 from tests/data) and each
budget B, every compared layer gets, per method, the ranks whose multiply-adds are closest to
1/B of the layer's own (the achieved ratio and the worst layer's deviation are printed): for
Tucker-2 and each BTD block the (R3, R4) that minimises |FLOPs/target − 1| + 0.1·|ln((R3/R4)/(S/T))|
(near the budget, in proportion to the channels), for CP the nearest R.  Compared layers: every convolution with a kernel larger than 1×1 and more than 3
input channels (the first convolution, with 1 or 3 input channels, is left alone).  Printed:

1. reconstruction error ‖W − Ŵ‖/‖W‖ per method and budget (mean and worst over the layers), and
   CP fits that were refused (DecompositionFailed);
2. at each of ``--accuracy-budgets``: the digits net's top-1 accuracy on its 500 test images in
   Caffe, before and after 5 epochs of ``finetune`` (real ``caffe train``), per method;
3. at ``--budget``: Caffe CPU time of the compressed layers (sum of their new layers) and of the
   whole net, every method's net and the original timed in alternation in one run (medians of
   ``--repeats``, batch ``--batch``), as ratios to the original, beside the FLOPs ratio; and per
   position of the new layers (first, middle ..., last) their multiply-adds and time, the
   throughput Caffe reaches on each kind of layer (grouped and depthwise convolutions run as a
   loop over groups in Caffe's CPU path).

Writes a PNG of error against FLOPs ratio (``--png``, default methods_compare.png) and all
figures as JSON (``--json``).  Needs a Caffe runtime for parts 2 and 3 (skipped without one), and
scikit-learn + lmdb for part 2.  Nothing is asserted; compare ratios within one run.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import shlex
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from caffe_tucker import ConvertOptions, convert, write_outputs  # noqa: E402
from caffe_tucker.analysis.cost import analyze  # noqa: E402
from caffe_tucker.caffe.bench import _with_batch  # noqa: E402  (bench's own batch rewrite)
from caffe_tucker.caffe.finetune import finetune  # noqa: E402
from caffe_tucker.caffe.pycaffe import CaffeRuntime, runtime_available  # noqa: E402
from caffe_tucker.compress.methods import get_method  # noqa: E402
from caffe_tucker.model import load_model  # noqa: E402
from caffe_tucker.report.plots import png_bytes, pyplot  # noqa: E402

DATA = ROOT / "tests" / "data"
DIGITS = ROOT / "zoo_models" / "digits"
MODELS = {
    "digits": (DIGITS / "deploy.prototxt", DIGITS / "digits.caffemodel", None),
    "cifar10_quick": (DATA / "cifar10_quick" / "cifar10_quick.prototxt",
                      DATA / "cifar10_quick" / "cifar10_quick_iter_5000.caffemodel", None),
    "resnet20": (DATA / "resnet20_cifar10" / "res20_cifar_train_test.prototxt",
                 DATA / "resnet20_cifar10" / "cifar10_res20_iter_64000.caffemodel",
                 {None: (1, 3, 32, 32)}),
}
#: (label, method, blocks); blocks is None for a method with one rank (CP)
METHODS = (("Tucker-2", "tucker2", 1), ("BTD N=2", "btd", 2), ("BTD N=4", "btd", 4),
           ("CP", "cp", None))
#: Weight of the departure from R3 : R4 = S : T against the FLOPs mismatch (0.1: a ratio 35 % off
#: the proportion costs as much as 3 % off the budget).
SKEW = 0.1
EPOCHS = 5


def compared_layers(model) -> list[str]:
    out = []
    for layer in model.net.layers:
        info = model.shapes.layers.get(layer.name)
        if layer.type != "Convolution" or info is None:
            continue
        geo = info.geometry
        if max(geo.kernel) > 1 and info.inputs[0][1] > 3 and geo.group == 1:
            out.append(layer.name)
    return out


def _bilinear(cost):
    """FLOPs(r3, r4) = a·r3 + b·r3·r4 + c·r4 from four evaluations of ``cost``."""
    f11, f21, f12, f22 = cost(1, 1), cost(2, 1), cost(1, 2), cost(2, 2)
    b = f22 - f21 - f12 + f11
    return f21 - f11 - b, b, f12 - f11 - b


def match_ranks(method: str, blocks, layer, info, target: float):
    """The method's ranks whose FLOPs are closest to ``target`` (see the module docstring)."""
    m = get_method(method)

    def flops(ranks):
        return sum(m.cost(layer, info, ranks)[1])

    if len(m.rank_labels) == 1:  # CP: FLOPs linear in R
        per = flops((1,))
        r = max(1, round(target / per))
        return (r,), flops((r,))
    t, s = info.params[0][:2]
    n = blocks
    ranks_of = ((lambda r3, r4: (r3, r4)) if len(m.rank_labels) == 2 else
                (lambda r3, r4: (n * r3, n * r4, n)))
    a, b, c = _bilinear(lambda r3, r4: flops(ranks_of(r3, r4)))
    best = None
    for r3 in range(1, s // n + 1):
        for r4 in range(1, t // n + 1):
            f = a * r3 + b * r3 * r4 + c * r4
            key = abs(f - target) / target + SKEW * abs(math.log((r3 / r4) / (s / t)))
            if best is None or key < best[0]:
                best = (key, (r3, r4))
    ranks = ranks_of(*best[1])
    return ranks, flops(ranks)


def entry(method: str, ranks) -> dict:
    return {"method": method, "ranks": list(ranks) if len(ranks) > 1 else int(ranks[0])}


def compare_errors(budgets, out_root: Path) -> dict:
    """Part 1: convert each model with each method at each budget; errors and FLOPs."""
    figures = {}
    for name, (proto, weights, shapes) in MODELS.items():
        model = load_model(proto, weights, input_shapes=shapes, deploy=True)
        layers = compared_layers(model)
        before = analyze(model.net, model.shapes)
        base = sum(before.row(n).flops for n in layers)
        figures[name] = {"layers": layers, "flops": base, "runs": {}}
        for budget in budgets:
            for label, method, blocks in METHODS:
                ranks, achieved = {}, 0
                for n in layers:
                    layer, info = model.net.layer(n), model.shapes.layers[n]
                    r, f = match_ranks(method, blocks, layer, info, before.row(n).flops / budget)
                    ranks[n] = entry(method, r)
                    achieved += f
                t0 = time.perf_counter()
                result = convert(proto, weights, ConvertOptions(
                    ranks=ranks, input_shapes=shapes, spectra=False), progress=False)
                seconds = time.perf_counter() - t0
                rows = [result.record.layer(n) for n in layers]
                errors = [r.rel_error for r in rows if r.compressed]
                refused = [f"{r.name}: {r.skipped_reason}" for r in rows if not r.compressed]
                flops_after = sum(r.flops_after for r in rows)
                run = {"budget": budget, "method": label, "ranks": ranks,
                       "flops_ratio": base / flops_after,
                       "layer_flops_off": max(abs(r.flops_after * budget / r.flops_before - 1)
                                              for r in rows if r.compressed),
                       "mean_error": float(np.mean(errors)) if errors else None,
                       "max_error": float(np.max(errors)) if errors else None,
                       "errors": {r.name: r.rel_error for r in rows},
                       "refused": refused, "convert_s": round(seconds, 1)}
                figures[name]["runs"][f"{label}@{budget}"] = run
                out = out_root / name / f"{method}{blocks or ''}_x{budget}"
                write_outputs(result, out, force=True, plot=False)
                run["dir"] = str(out)
                print(f"{name:14s} x{budget:<3} {label:9s} FLOPs x{run['flops_ratio']:.2f} "
                      f"(worst layer {100 * run['layer_flops_off']:.1f}% off)  error mean "
                      f"{run['mean_error']:.3f} max {run['max_error']:.3f}  refused {len(refused)}  "
                      f"{seconds:.1f} s", flush=True)
    return figures


def _recipe():
    spec = importlib.util.spec_from_file_location("digits_train", DIGITS / "train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _accuracy(rt, deploy: Path, weights: Path, x, y) -> float:
    prob = rt.forward(deploy.read_text(), weights.read_bytes(), {"data": x}, blobs=["prob"])
    return float(np.mean(prob["prob"].reshape(len(x), -1).argmax(axis=1) == y.astype(np.int64)))


def finetune_digits(rt, figures, budgets, root: Path) -> dict:
    """Part 2: digits top-1 before and after fine-tuning, per method at each budget."""
    recipe = _recipe()
    _, _, x_test, y_test = recipe.load_split()
    work = Path(tempfile.mkdtemp(prefix="methods_ft_", dir=root / "tmp"))
    inside = lambda p: "/" + str(Path(p).resolve().relative_to(root.resolve()))  # noqa: E731
    out = {"original": _accuracy(rt, DIGITS / "deploy.prototxt", DIGITS / "digits.caffemodel",
                                 x_test, y_test)}
    try:
        train, test = recipe.export_lmdb(work)
        for budget, (label, method, blocks) in ((b, m) for b in budgets for m in METHODS):
            run = figures["digits"]["runs"][f"{label}@{budget}"]
            ranks = work / f"{method}{blocks}.json"
            ranks.write_text(json.dumps(run["ranks"]))
            d = work / f"{method}{blocks}"
            result = convert(DIGITS / "deploy.prototxt", None, ConvertOptions(
                ranks=run["ranks"], spectra=False, train_source=inside(train),
                val_source=inside(test), train_images=1297, val_images=500, batch_size=64,
                epochs=EPOCHS), progress=False)
            write_outputs(result, d, force=True, plot=False)
            before = _accuracy(rt, d / "deploy.prototxt", d / "weights.caffemodel", x_test, y_test)
            t0 = time.perf_counter()
            finetune(d, f"chroot {root} caffe", progress=False)
            seconds = time.perf_counter() - t0
            after = _accuracy(rt, d / "deploy.prototxt", d / "finetuned.caffemodel", x_test, y_test)
            out[f"{label}@{budget}"] = {"before": before, "after": after,
                                        "finetune_s": round(seconds, 1)}
            print(f"digits x{budget} {label:9s} top-1 {100 * before:.1f}% -> {100 * after:.1f}% "
                  f"after {EPOCHS} epochs ({seconds:.1f} s)", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out


def time_methods(rt, figures, budget: int, batch: int, iterations: int, repeats: int) -> dict:
    """Part 3: the original and every method's net timed in alternation, per model."""
    out = {}
    for name, (proto, weights, shapes) in MODELS.items():
        original = load_model(proto, weights, input_shapes=shapes, deploy=True)
        nets = {"original": original.net}
        records = {}
        for label, _, _ in METHODS:
            d = Path(figures[name]["runs"][f"{label}@{budget}"]["dir"])
            nets[label] = load_model(d / "deploy.prototxt", d / "weights.caffemodel").net
            records[label] = json.loads((d / "report.json").read_text())
        nets = {k: _with_batch(v, batch) for k, v in nets.items()}
        runs = {k: [] for k in nets}
        for _ in range(repeats):
            for k, net in nets.items():
                runs[k].append(rt.time(net, batch=batch, iterations=iterations, warmup=3))

        def ms(key, layer):
            return statistics.median(next(l["ms"] for l in r["layers"] if l["name"] == layer)
                                     for r in runs[key])

        layers = figures[name]["layers"]
        orig_layers = sum(ms("original", n) for n in layers)
        orig_total = statistics.median(r["forward_ms"] for r in runs["original"])
        orig_flops = figures[name]["flops"] * batch / 1e6
        out[name] = {"batch": batch, "original_layers_ms": orig_layers, "original_ms": orig_total,
                     "original_gflops_per_s": orig_flops / orig_layers}
        print(f"{name:14s} original  compared layers {orig_layers:.2f} ms, "
              f"{orig_flops / orig_layers:.1f} GFLOP/s", flush=True)
        for label, _, _ in METHODS:
            rows = {l["name"]: l for l in records[label]["layers"]}
            parts = [[ms(label, p) for p in rows[n]["new_layers"]] if rows[n]["new_layers"]
                     else [ms(label, n)] for n in layers]
            new_ms = sum(sum(p) for p in parts)
            flops = [rows[n]["flops_parts"] or [rows[n]["flops_after"]] for n in layers]
            total = statistics.median(r["forward_ms"] for r in runs[label])
            flops_ratio = figures[name]["runs"][f"{label}@{budget}"]["flops_ratio"]
            positions = range(max(map(len, parts)))
            part_sums = [sum(p[i] for p in parts if len(p) > i) for i in positions]
            part_flops = [sum(f[i] for f in flops if len(f) > i) for i in positions]
            out[name][label] = {"layers_ms": new_ms, "layers_speedup": orig_layers / new_ms,
                                "flops_ratio": flops_ratio, "total_ms": total,
                                "total_speedup": orig_total / total, "parts_ms": part_sums,
                                "parts_mflops": [f * batch / 1e6 for f in part_flops],
                                "parts_gflops_per_s": [f * batch / 1e6 / ms if ms else None
                                                       for f, ms in zip(part_flops, part_sums)]}
            rates = out[name][label]["parts_gflops_per_s"]
            print(f"{name:14s} {label:9s} compared layers {orig_layers:.2f} -> {new_ms:.2f} ms "
                  f"(x{orig_layers / new_ms:.2f} of FLOPs x{flops_ratio:.2f}; parts "
                  f"{'+'.join(f'{p:.2f}' for p in part_sums)} ms at "
                  f"{'/'.join(f'{r:.1f}' for r in rates)} GFLOP/s)  whole net "
                  f"x{orig_total / total:.2f}", flush=True)
    return out


def error_png(figures, budgets) -> bytes:
    plt = pyplot()
    fig, axes = plt.subplots(1, len(figures), figsize=(4.6 * len(figures), 3.8), squeeze=False)
    for ax, (name, fig_data) in zip(axes[0], figures.items()):
        for label, _, _ in METHODS:
            runs = [fig_data["runs"][f"{label}@{b}"] for b in budgets]
            ax.plot([r["flops_ratio"] for r in runs], [r["mean_error"] for r in runs], "o-",
                    label=label, lw=1.2, ms=4)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("FLOPs reduction of the compared layers (×)", fontsize=8)
        ax.set_ylabel("mean relative error ‖W − Ŵ‖/‖W‖", fontsize=8)
        ax.set_title(f"{name} ({len(fig_data['layers'])} layers)", fontsize=9)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return png_bytes(fig)


def print_table(figures, budget, accuracy, timing, accuracy_budgets) -> None:
    print(f"\nAt x{budget} fewer multiply-adds in each compared layer:\n")
    print("| model | method | FLOPs ratio (worst layer off) | rel. error mean / worst | refused | "
          "Caffe time ratio, layers | whole net |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for name, data in figures.items():
        for label, _, _ in METHODS:
            run = data["runs"][f"{label}@{budget}"]
            tm = (timing or {}).get(name, {}).get(label)
            lay = f"×{tm['layers_speedup']:.2f}" if tm else ""
            whole = f"×{tm['total_speedup']:.2f}" if tm else ""
            print(f"| {name} | {label} | ×{run['flops_ratio']:.2f} "
                  f"({100 * run['layer_flops_off']:.0f}%) | {run['mean_error']:.3f} / "
                  f"{run['max_error']:.3f} | {len(run['refused'])} | {lay} | {whole} |")
    if accuracy:
        print(f"\ndigits, top-1 on the 500 test digits in Caffe before → after {EPOCHS} epochs of "
              f"finetune (original {100 * accuracy['original']:.1f}%):\n")
        print("| budget | " + " | ".join(label for label, _, _ in METHODS) + " |")
        print("|---|" + "---:|" * len(METHODS))
        for b in accuracy_budgets:
            cells = []
            for label, _, _ in METHODS:
                a, run = accuracy[f"{label}@{b}"], figures["digits"]["runs"][f"{label}@{b}"]
                cells.append(f"{100 * a['before']:.1f}% → {100 * a['after']:.1f}% "
                             f"(err {run['mean_error']:.2f})")
            print(f"| ×{b} | " + " | ".join(cells) + " |")
    print(f"\nrelative error (mean over the compared layers) by budget:\n")
    for name, data in figures.items():
        budgets = sorted({r["budget"] for r in data["runs"].values()})
        print(f"{name}: " + "; ".join(
            f"{label} " + " ".join(f"{data['runs'][f'{label}@{b}']['mean_error']:.3f}"
                                  for b in budgets) for label, _, _ in METHODS)
            + f"  (budgets {', '.join(f'x{b}' for b in budgets)})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budgets", default="2,4,8,16")
    parser.add_argument("--budget", type=int, default=4, help="the budget of part 3")
    parser.add_argument("--accuracy-budgets", default="4,16,32,64", help="the budgets of part 2")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--png", default="methods_compare.png")
    parser.add_argument("--json", default=None)
    parser.add_argument("--no-caffe", action="store_true")
    parser.add_argument("--models", default=",".join(MODELS), help="a subset of " + ", ".join(MODELS))
    args = parser.parse_args()
    accuracy_budgets = [int(b) for b in args.accuracy_budgets.split(",")]
    budgets = sorted({int(b) for b in args.budgets.split(",")} | {args.budget}
                     | set(accuracy_budgets))
    os.environ["CAFFE_TUCKER_PROGRESS"] = "0"
    for name in set(MODELS) - set(args.models.split(",")):
        del MODELS[name]
    out_root = Path(tempfile.mkdtemp(prefix="methods_compare_"))
    try:
        figures = compare_errors(budgets, out_root)
        Path(args.png).write_bytes(error_png(figures, budgets))
        accuracy = timing = None
        if not args.no_caffe and runtime_available() is None:
            argv = shlex.split(os.environ.get("CAFFE_TUCKER_PYTHON", ""))
            with CaffeRuntime(None, timeout=600) as rt:
                if len(argv) >= 3 and os.path.basename(argv[0]) == "chroot" and "digits" in MODELS:
                    accuracy = finetune_digits(rt, figures, accuracy_budgets, Path(argv[1]))
                timing = time_methods(rt, figures, args.budget, args.batch, args.iterations,
                                      args.repeats)
        print_table(figures, args.budget, accuracy, timing, accuracy_budgets)
        if args.json:
            Path(args.json).write_text(json.dumps({"errors": figures, "accuracy": accuracy,
                                                   "timing": timing}, indent=1, default=str))
        print(f"\nwrote {args.png}")
    finally:
        shutil.rmtree(out_root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
