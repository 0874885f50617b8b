"""``pack``: store a trained model losslessly in a ``.ctz`` container (every blob raw).

The lossless baseline of the compressed container (:mod:`caffe_tucker.quantize.container`): the
quantizing command writes its quantized blobs into the same format.
"""

from __future__ import annotations

from pathlib import Path

from caffe_tucker.cli.args import add_force, add_output, add_prototxt, add_weights
from caffe_tucker.io.fsutil import check_output


def add_parser(subparsers):
    p = subparsers.add_parser("pack", help="store a model losslessly in a .ctz container")
    add_prototxt(p, "deploy net definition")
    add_weights(p, "trained weights (default: <prototxt stem>.caffemodel beside it)")
    add_output(p, "OUT.ctz", "the container (default: the weights' name with .ctz, beside them)")
    p.add_argument("--codec", default="bz2", choices=["bz2", "lzma", "zlib"],
                   help="lossless code of the container's sections (default bz2)")
    add_force(p, "replace an existing output")
    return p


def run(args) -> int:
    from caffe_tucker.io.read import weights_for
    from caffe_tucker.model import load_model
    from caffe_tucker.quantize.container import Packed, write_container

    proto = Path(args.prototxt)
    weights = weights_for(proto, args.weights)
    out = Path(args.output) if args.output else weights.with_suffix(".ctz")
    inputs = [proto, weights]
    check_output(out, args.force, inputs)  # fail before the work, not after
    model = load_model(proto, weights)
    net = model.net
    packed = Packed(
        net=net.with_layers(layer.with_blobs(()) for layer in net.layers),
        raw={(layer.name, i): blob for layer in net.layers for i, blob in enumerate(layer.blobs)},
        codec=args.codec, meta={"packed_by": "pack", "prototxt": proto.name,
                                "weights": weights.name})
    path = write_container(packed, out, force=args.force, inputs=inputs)
    before, after = weights.stat().st_size, path.stat().st_size
    values = sum(blob.size for blob in packed.raw.values())
    print(f"packed {len(packed.raw)} blobs of {sum(1 for l in net.layers if l.blobs)} layers "
          f"losslessly ({values:,} values), codec {args.codec}")
    print(f"caffemodel {before:,} bytes -> container {after:,} bytes (x{before / after:.2f})")
    print(f"wrote {path}")
    return 0
