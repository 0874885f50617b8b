"""Benchmark: the two VBMF solvers' ranks and times on the bundled real models.

    python benchmarks/vbmf_solvers.py [--all]

For every layer `convert` plans on the bundled trained nets (zoo digits; tests/data's
cifar10_quick, ResNet-20 and LeNet), the ranks `ranks` chooses with ``--vbmf-solver reference``
(the public Python EVBMF port's decisions, the default) and ``--vbmf-solver global`` (the free
energy's global minimum), and the time each solver's rank selection takes for the whole net
(medians of 3, alternating).  Prints the layers where they differ (``--all``: every layer) and a
summary line per model.  Figures are printed; nothing is asserted.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from caffe_tucker.compress.convert import ConvertOptions, choose_ranks  # noqa: E402

DATA = ROOT / "tests" / "data"
MODELS = {
    "digits": (ROOT / "zoo_models" / "digits" / "deploy.prototxt",
               ROOT / "zoo_models" / "digits" / "digits.caffemodel", None),
    "cifar10_quick": (DATA / "cifar10_quick" / "cifar10_quick.prototxt",
                      DATA / "cifar10_quick" / "cifar10_quick_iter_5000.caffemodel", None),
    "resnet20": (DATA / "resnet20_cifar10" / "res20_cifar_train_test.prototxt",
                 DATA / "resnet20_cifar10" / "cifar10_res20_iter_64000.caffemodel",
                 {"Data1": (1, 3, 32, 32)}),
    "lenet": (DATA / "lenet_mnist_v1format" / "lenet.prototxt",
              DATA / "lenet_mnist_v1format" / "lenet_iter_10000.caffemodel", None),
}


def ranks_of(proto, weights, shapes, solver):
    t = time.perf_counter()
    _model, _preset, choices = choose_ranks(proto, weights, ConvertOptions(
        vbmf_solver=solver, spectra=False, input_shapes=shapes))
    return {n: (c.method, c.ranks) for n, c in choices.items()}, time.perf_counter() - t


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--all", action="store_true", help="print every layer, not only differences")
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args(argv)
    print("| model | layer | method | reference | global |")
    print("|---|---|---|---|---|")
    summary = []
    for name, (proto, weights, shapes) in MODELS.items():
        times = {"reference": [], "global": []}
        for _ in range(args.repeat):
            for solver in times:
                ranks, seconds = ranks_of(proto, weights, shapes, solver)
                times[solver].append(seconds)
                if solver == "reference":
                    ref = ranks
                else:
                    glo = ranks
        differ = 0
        for layer, (method, r) in ref.items():
            g = glo[layer][1]
            if r != g:
                differ += 1
            if r != g or args.all:
                print(f"| {name} | {layer} | {method} | {list(r)} | {list(g)} |")
        summary.append(f"{name}: {differ} of {len(ref)} planned layers differ; rank selection "
                       f"{statistics.median(times['reference']):.2f} s (reference) vs "
                       f"{statistics.median(times['global']):.2f} s (global), medians of "
                       f"{args.repeat}")
    print()
    print("\n".join(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
