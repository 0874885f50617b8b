"""Regenerate caffe_tucker/io/caffe_pb2.py from proto/caffe.proto.

Run from the repository root, in an environment that has the pinned code
generator (it needs protobuf 4.x, so keep it out of the tool's own env):

    python -m venv /tmp/protoc-env
    /tmp/protoc-env/bin/pip install grpcio-tools==1.62.3
    /tmp/protoc-env/bin/python proto/generate.py

The pinned generator (protoc 25.1) writes code that imports on every
protobuf runtime the tool accepts (4.21 to 7.x).  The first line of the
output records the SHA-256 of the schema it was made from; a test fails when
proto/caffe.proto no longer matches it.
"""

import hashlib
import os
import subprocess
import sys
import tempfile

PINNED = "1.62.3"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCHEMA = os.path.join(ROOT, "proto", "caffe.proto")
TARGET = os.path.join(ROOT, "caffe_tucker", "io", "caffe_pb2.py")


def main() -> int:
    try:
        from importlib.metadata import version
        found = version("grpcio-tools")
    except Exception:
        found = None
    if found != PINNED:
        print(f"proto/generate.py: needs grpcio-tools=={PINNED} in this interpreter, found {found}; "
              "see the docstring for the three commands", file=sys.stderr)
        return 1
    with open(SCHEMA, "rb") as fh:
        digest = hashlib.sha256(fh.read()).hexdigest()
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "grpc_tools.protoc", f"-I{os.path.dirname(SCHEMA)}",
                        f"--python_out={tmp}", SCHEMA], check=True)
        with open(os.path.join(tmp, "caffe_pb2.py"), encoding="utf-8") as fh:
            body = fh.read()
    stamp = f"# caffe_tucker: generated from proto/caffe.proto sha256={digest} by proto/generate.py\n"
    with open(TARGET + ".tmp", "w", encoding="utf-8") as fh:
        fh.write(stamp + body)
    os.replace(TARGET + ".tmp", TARGET)
    print(f"wrote {os.path.relpath(TARGET, ROOT)} (schema sha256 {digest[:12]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
