"""``fetch``: download a zoo model's weights and check their SHA1."""

from __future__ import annotations

import sys

from caffe_tucker.cli.args import add_force, add_output, non_empty
from caffe_tucker.zoo import fetch, sha1_of, zoo_model


def add_parser(subparsers):
    p = subparsers.add_parser("fetch", help="download a zoo model's weights and check their SHA1")
    p.add_argument("model", type=non_empty, help="zoo model name (alexnet, vgg_s, googlenet, vgg16)")
    add_output(p, "PATH", "where to save (default: the cache directory)")
    p.add_argument("--url", type=non_empty, help="download from here instead of the zoo URL (e.g. a mirror or file://)")
    add_force(p, "replace an existing file")
    return p


def run(args) -> int:
    path = fetch(args.model, dest=args.output, url=args.url, force=args.force)
    if not zoo_model(args.model)["weights"].get("sha1"):
        print(f"warning: no SHA1 is published for {args.model}; saved unverified "
              f"(sha1 {sha1_of(path)})", file=sys.stderr)
    print(f"{path}")
    return 0
