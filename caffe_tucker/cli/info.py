"""``info``: per-layer shapes, weights and FLOPs of a net."""

from __future__ import annotations

import sys

from caffe_tucker.analysis.cost import analyze
from caffe_tucker.cli.args import add_format, add_net_input, input_shapes
from caffe_tucker.io.read import read_net_text
from caffe_tucker.model import load_model
from caffe_tucker.report.tables import info_columns, render


def add_parser(subparsers):
    p = subparsers.add_parser("info", help="per-layer shapes, weights and FLOPs of a net")
    add_net_input(p)
    add_format(p)
    return p


def run(args) -> int:
    prototxt = read_net_text(sys.stdin.buffer) if args.prototxt == "-" else args.prototxt
    model = load_model(prototxt, args.weights, phase=args.phase,
                       input_shapes=input_shapes(args))
    net = model.net
    result = analyze(net, model.shapes)
    payload = result.to_dict()
    if args.format == "json":
        sys.stdout.write(render([], [], "json", payload=payload))
        return 0
    rows = payload["layers"]
    footer = {"name": "total", **payload["total"]}
    if args.format == "table":
        inputs = ", ".join(f"{k} {'x'.join(map(str, v))}" for k, v in payload["input"].items())
        print(f"model: {result.model or '(unnamed)'}   input: {inputs}"
              + (f"   upgraded: {', '.join(net.upgrades)}" if net.upgrades else ""))
    sys.stdout.write(render(info_columns(), rows, args.format, footer=footer))
    for problem in result.problems:
        print(f"warning: {problem}", file=sys.stderr)
    return 0
