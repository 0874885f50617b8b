"""``init``: write random weights drawn from each layer's fillers."""

from __future__ import annotations

from caffe_tucker.cli.args import add_force, add_input_shape, add_output, add_prototxt, add_seed, input_shapes
from caffe_tucker.io.emit import write_caffemodel
from caffe_tucker.io.fillers import init_weights
from caffe_tucker.io.fsutil import check_output
from caffe_tucker.io.read import read_prototxt


def add_parser(subparsers):
    p = subparsers.add_parser("init", help="write random weights drawn from each layer's fillers")
    add_prototxt(p)
    add_output(p, "CAFFEMODEL", required=True)
    add_seed(p)
    add_input_shape(p)
    add_force(p, "replace an existing output")
    return p


def run(args) -> int:
    net = read_prototxt(args.prototxt)
    check_output(args.output, args.force, [args.prototxt])  # fail before the work, not after
    net = init_weights(net, seed=args.seed, input_shapes=input_shapes(args))
    path = write_caffemodel(net, args.output, force=args.force, inputs=[args.prototxt])
    n = sum(b.size for layer in net.layers for b in layer.blobs)
    print(f"wrote {path}: {n:,} parameters in {sum(1 for l in net.layers if l.blobs)} layers, seed {args.seed}")
    return 0
