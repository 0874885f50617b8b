"""``unpack``: a ``.ctz`` container back to ``deploy.prototxt`` + ``weights.caffemodel``, or
``--check``: verify it without writing."""

from __future__ import annotations

from pathlib import Path

from caffe_tucker.cli.args import add_force, add_output, non_empty


def add_parser(subparsers):
    p = subparsers.add_parser("unpack", help="write a .ctz container back as a prototxt and a "
                              "caffemodel Caffe loads")
    p.add_argument("container", type=non_empty, metavar="MODEL.ctz", help="the container")
    what = p.add_mutually_exclusive_group()
    add_output(what, "OUT_DIR", "output directory (default: <stem>_unpacked/ beside the input)")
    what.add_argument("--check", action="store_true",
                      help="verify the checksums and decode every blob, writing nothing "
                      "(exit 0: sound, 1: not)")
    add_force(p, "replace an existing non-empty output directory")
    return p


def run(args) -> int:
    from caffe_tucker.io.emit import caffemodel_chunks, prototxt_text
    from caffe_tucker.io.fsutil import check_out_dir, read_bytes, write_directory
    from caffe_tucker.quantize.container import (VERSION, caffemodel_net, container_sizes,
                                                  unpack_bytes)

    src = Path(args.container)
    data = read_bytes(src, ".ctz container")
    out = Path(args.output) if args.output else src.parent / f"{src.stem}_unpacked"
    if not args.check:
        check_out_dir(out, args.force, [src])  # fail before the work, not after
    packed = unpack_bytes(data, str(src))
    net = caffemodel_net(packed)
    counts = f"{len(packed.quantized)} quantized blobs, {len(packed.raw)} raw"
    if args.check:
        sizes = container_sizes(data)
        print(f"{src}: OK: format version {VERSION}, codec {packed.codec}, {counts}, "
              f"{sizes['total']:,} bytes")
        for row in sizes["quantized"]:
            print(f"  {row['layer']} blob {row['blob']}: {row['weights']:,} weights, "
                  f"{row['k']} levels, {row['codebook'] + row['symbols']:,} bytes "
                  f"({row['bits_per_weight']:.3f} bits per weight)"
                  if row["weights"] else f"  {row['layer']} blob {row['blob']}: empty")
        return 0
    files = {"deploy.prototxt": prototxt_text(net), "weights.caffemodel": caffemodel_chunks(net)}
    write_directory(out, files, force=args.force, inputs=[src])
    print(f"decoded {counts}")
    print(f"wrote {out}/: {', '.join(files)}")
    return 0
