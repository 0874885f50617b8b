"""``export``: write a trained Caffe net (original or compressed) as an ONNX model.

The net is a prototxt with its weights, or a ``convert`` output directory (its
``deploy.prototxt`` and ``weights.caffemodel``); a train_val is exported as its deploy net.
The model is checked with ``onnx.checker`` (full check) before it is written, atomically.
"""

from __future__ import annotations

from pathlib import Path

from caffe_tucker.cli.args import add_force, add_input_shape, add_weights, input_shapes, int_in, non_empty


def add_parser(subparsers):
    p = subparsers.add_parser("export", help="write a net (original or compressed) as ONNX")
    p.add_argument("prototxt", type=non_empty, metavar="NET",
                   help="net definition (deploy or train_val), or a convert output directory")
    add_weights(p, "trained weights (default: <prototxt stem>.caffemodel beside it; for a convert "
                "output directory its weights.caffemodel)")
    p.add_argument("--onnx", type=non_empty, required=True, metavar="OUT.onnx",
                   help="the ONNX file to write")
    p.add_argument("--opset", type=int_in(13), default=13, metavar="N",
                   help="ONNX opset version (default 13, the oldest with Softmax over one axis)")
    add_input_shape(p, "shape of a data input the net does not declare (repeatable; a train_val's "
                    "data layers need it)")
    add_force(p, "replace an existing output")
    return p


def _net_files(args) -> tuple[Path, Path]:
    from caffe_tucker.errors import InputFileError
    from caffe_tucker.io.read import weights_for

    net = Path(args.prototxt)
    if net.is_dir():
        if not (net / "deploy.prototxt").is_file():
            raise InputFileError(f"{net}: a directory without deploy.prototxt, so not a convert "
                                 "output directory; hint: pass a net definition, or the output "
                                 "directory of 'convert'")
        weights = Path(args.weights) if args.weights else net / "weights.caffemodel"
        return net / "deploy.prototxt", weights
    return net, weights_for(net, args.weights)


def run(args) -> int:
    from caffe_tucker.export.onnx import build_model, check, import_onnx
    from caffe_tucker.io.fsutil import check_output, write_atomic
    from caffe_tucker.model import load_model

    import_onnx()  # a missing onnx is named before any work
    proto, weights = _net_files(args)
    out = Path(args.onnx)
    inputs = [proto, weights]
    check_output(out, args.force, inputs)  # fail before the work, not after
    model = load_model(proto, weights, input_shapes=input_shapes(args), deploy=True)
    onnx_model = build_model(model, opset=args.opset)
    check(onnx_model)
    data = onnx_model.SerializeToString(deterministic=True)
    path = write_atomic(out, [data], force=args.force, inputs=inputs)

    def shapes(values):
        return ", ".join(
            f"{v.name} {'x'.join(str(d.dim_value) for d in v.type.tensor_type.shape.dim)}"
            for v in values)

    graph = onnx_model.graph
    print(f"exported {len(model.net.layers)} layers as {len(graph.node)} ONNX nodes "
          f"(opset {args.opset}); inputs: {shapes(graph.input)}; outputs: {shapes(graph.output)}")
    print(f"wrote {path} ({len(data):,} bytes)")
    return 0
