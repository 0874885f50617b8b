"""A stand-in for Caffe's ``caffe`` binary, for testing ``finetune`` without Caffe.

    python fake_caffe.py MODE train --solver solver_run.prototxt (--weights W | --snapshot S)

It reads ``max_iter``, ``test_interval``, ``display``, ``snapshot`` and ``snapshot_prefix`` from
the solver and prints Caffe-like glog lines (on stderr, as Caffe does) for:

- ``ok``: every iteration from 0 (or the resumed one) to max_iter, tests, snapshots (small files
  holding ``weights N`` and ``state N``) and ``Optimization Done.``;
- ``slow``: the same, 20 ms per iteration; SIGINT makes it snapshot at the current iteration and
  stop early, as Caffe's default ``-sigint_effect stop`` does;
- ``fail``: a few setup lines, then a glog FATAL ``Check failed`` line, exit status 1;
- ``nothing``: exits 0 at once, printing nothing (like ``--caffe true``).
"""

import re
import signal
import sys
import time
from pathlib import Path


def glog(message, level="I", where="solver.cpp:239"):
    stamp = time.strftime("%m%d %H:%M:%S")
    print(f"{level}{stamp}.000000 4242 {where}] {message}", file=sys.stderr, flush=True)


def solver_values(path):
    text = Path(path).read_text()
    return {k: v for k, v in re.findall(r'^(\w+):\s*"?([^"\n]*)"?\s*$', text, re.M)}


def snapshot(prefix, it):
    weights, state = Path(f"{prefix}_iter_{it}.caffemodel"), Path(f"{prefix}_iter_{it}.solverstate")
    weights.write_bytes(b"weights %d" % it)
    glog(f"Snapshotting to binary proto file {weights}", where="solver.cpp:464")
    state.write_bytes(b"state %d" % it)
    glog(f"Snapshotting solver state to binary proto file {state}", where="sgd_solver.cpp:273")


def main(argv):
    mode, args = argv[0], argv[1:]
    if mode == "nothing":
        return 0
    solver = solver_values(args[args.index("--solver") + 1])
    glog("Initializing solver from parameters:", where="caffe.cpp:197")
    if mode == "fail":
        glog("Check failed: mdb_status == 0 (2 vs. 0) No such file or directory", level="F",
             where="db_lmdb.hpp:15")
        return 1
    max_iter, test_interval = int(solver["max_iter"]), int(solver.get("test_interval", 0) or 0)
    display, every = int(solver.get("display", 1) or 1), int(solver.get("snapshot", 0) or 0)
    prefix = solver["snapshot_prefix"]
    start = 0
    if "--snapshot" in args:
        state = args[args.index("--snapshot") + 1]
        start = int(re.search(r"_iter_(\d+)\.", state).group(1))
        glog(f"Resuming from {state}", where="caffe.cpp:251")
    stop = []
    if mode == "slow":
        signal.signal(signal.SIGINT, lambda *_: stop.append(True))
    it = start
    while True:
        if test_interval and it % test_interval == 0:
            glog(f"Iteration {it}, Testing net (#0)", where="solver.cpp:347")
            glog(f"    Test net output #0: accuracy_top1 = {0.5 + it / (2 * max_iter):.4f}",
                 where="solver.cpp:414")
        if it >= max_iter or stop:
            break
        if it % display == 0:
            glog(f"Iteration {it} (10 iter/s, 0.1s/{display} iters), loss = {1.0 / (1 + it):.5f}")
            glog(f"Iteration {it}, lr = 0.001", where="sgd_solver.cpp:112")
        it += 1
        if every and it % every == 0:
            snapshot(prefix, it)
        if mode == "slow":
            time.sleep(0.02)
    if not every or it % every:
        snapshot(prefix, it)
    glog("Optimization stopped early." if stop else "Optimization Done.", where="solver.cpp:332")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
