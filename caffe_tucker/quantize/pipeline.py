"""The whole ``quantize`` stage: quantize -> (fine-tune the codebooks in Caffe) -> pack, and its report.

:func:`quantize_model` quantizes the weights of a model (a ``sparsify`` output keeps its zeros:
they become the symbol 0), optionally fine-tunes the shared values in real Caffe
(:mod:`.finetune`), measures the model in Caffe before and after when test data is given, and
returns the :class:`~.container.Packed` container with a :class:`QuantizeReport`.

Sizes are reported three ways: the file sizes (the caffemodel; gzip, bzip2 and xz of it, the
generic baselines; the container), the paper's compression ratio ``32 bits x weights / coded
bits`` (every parameter of the net against every bit of the container) and, per layer, the bits
per non-zero weight (its codebook and symbols).
"""

from __future__ import annotations

import bz2
import lzma
import zlib
from dataclasses import asdict, dataclass, field

import numpy as np

from caffe_tucker.errors import check_param
from caffe_tucker.io.emit import caffemodel_chunks
from caffe_tucker.model import Model
from caffe_tucker.quantize.container import CODECS, Packed, container_sizes, pack_bytes
from caffe_tucker.quantize.quantizer import decoded_net, quant_stats, quantize_net

__all__ = ["QuantizeOptions", "QuantizeReport", "QuantizeResult", "quantize_model",
           "generic_sizes", "METHODS"]

METHODS = ("dithered", "uniform", "kmeans")


@dataclass(frozen=True)
class QuantizeOptions:
    """How to quantize: the method, one of ``bits``/``step``/``rel_error``, the layers, the codec,
    and the codebook fine-tuning (``finetune_iterations`` 0: none)."""

    method: str = "dithered"
    bits: int | None = None
    step: float | None = None
    rel_error: float | None = None
    layers: tuple | None = None
    seed: int = 0
    codec: str = "bz2"
    finetune_iterations: int = 0
    lr: float = 0.1
    momentum: float = 0.9
    batch: int = 32

    def __post_init__(self):
        check_param("method", self.method, self.method in METHODS, f"one of {set(METHODS)}",
                    "quantize")
        check_param("codec", self.codec, self.codec in CODECS, f"one of {set(CODECS)}",
                    "quantize")
        given = [n for n in ("bits", "step", "rel_error") if getattr(self, n) is not None]
        check_param("bits", self.bits, len(given) <= 1,
                    "given alone (one of bits, step and rel_error)", "quantize")
        if not given:
            object.__setattr__(self, "bits", 4)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["layers"] = list(self.layers) if self.layers is not None else None
        return d


@dataclass(frozen=True)
class QuantizeReport:
    """The figures of one ``quantize`` run (``to_dict`` is its JSON)."""

    layers: tuple                          # one dict per quantized blob
    sizes: dict                            # caffemodel, gzip, bzip2, xz, container (bytes)
    parameters: int                        # every parameter of the net
    paper_ratio: float                     # 32 * parameters / (8 * container bytes)
    measures: dict = field(default_factory=dict)   # original / quantized / finetuned, in Caffe
    metric: str | None = None
    options: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"version": 1, "options": self.options, "layers": list(self.layers),
                "sizes": self.sizes, "parameters": self.parameters,
                "paper_ratio": self.paper_ratio,
                "file_ratio": self.sizes["caffemodel"] / self.sizes["container"],
                "metric": self.metric, "measures": self.measures}


@dataclass(frozen=True)
class QuantizeResult:
    packed: Packed
    report: QuantizeReport
    data: bytes = field(repr=False)        # the container's bytes


def generic_sizes(caffemodel: bytes) -> dict:
    """The caffemodel's size and that of gzip (DEFLATE 9), bzip2 (9) and xz (preset 6) of it."""
    return {"caffemodel": len(caffemodel), "gzip": len(zlib.compress(caffemodel, 9)),
            "bzip2": len(bz2.compress(caffemodel, 9)), "xz": len(lzma.compress(caffemodel))}


def quantize_model(model: Model, options: QuantizeOptions, *, runtime=None, train=None,
                   test=None, meta: dict | None = None, on_iteration=None,
                   original: float | None = None) -> QuantizeResult:
    """Quantize ``model``, fine-tune its codebooks if asked, pack it; see the module docstring.

    ``runtime`` and ``test`` measure the model in Caffe (original, quantized, fine-tuned);
    ``train`` is needed for ``finetune_iterations`` > 0; ``original``, if known, is the original
    model's measure (not taken again).
    """
    net = model.net
    quantized = quantize_net(net, options.layers, options.method, bits=options.bits,
                             step=options.step, rel_error=options.rel_error, seed=options.seed)
    measures = {}
    metric = None
    if options.finetune_iterations:
        from caffe_tucker.quantize.finetune import finetune_codebooks

        check_param("train", train, train is not None and test is not None and runtime is not None,
                    "training and test data and a Caffe runtime for fine-tuning", "quantize")
        run = finetune_codebooks(model, quantized, train, test, runtime,
                                 iterations=options.finetune_iterations, lr=options.lr,
                                 momentum=options.momentum, batch=options.batch,
                                 seed=options.seed, on_iteration=on_iteration)
        measures.update(quantized=run.before, finetuned=run.after)
        metric = run.metric
        tuned = run.quantized
    else:
        tuned = quantized
    decoded = decoded_net(net, tuned)
    original_bytes = b"".join(bytes(c) for c in caffemodel_chunks(net))
    if runtime is not None and test is not None:
        from caffe_tucker.io.emit import prototxt_text
        from caffe_tucker.sparsity.schedule import evaluate

        text = prototxt_text(net)
        measures["original"] = (original if original is not None else
                                evaluate(runtime, text, original_bytes, test))
        if "quantized" not in measures:
            measures["quantized"] = evaluate(runtime, text,
                                             b"".join(caffemodel_chunks(decoded)), test)
        metric = test.metric
    names = {q.layer for q in tuned}
    raw = {(layer.name, i): np.asarray(blob, dtype=np.float32)
           for layer in net.layers for i, blob in enumerate(layer.blobs)
           if not (i == 0 and layer.name in names)}
    packed = Packed(net=net.with_layers(layer.with_blobs(()) for layer in net.layers),
                    quantized=tuple(tuned), raw=raw, codec=options.codec,
                    meta={"packed_by": "quantize", **(meta or {}),
                          "options": options.to_dict()})
    data = pack_bytes(packed)
    sizes = container_sizes(packed)
    file_sizes = {**generic_sizes(original_bytes), "container": len(data)}
    rows = []
    by_layer = {r["layer"]: r for r in sizes["quantized"]}
    for q in tuned:
        s = quant_stats(q, net.layer(q.layer).blobs[0])
        r = by_layer[q.layer]
        rows.append({"layer": q.layer, "method": q.method, "weights": r["weights"],
                     "nonzero": r["nonzero"], "levels": s.levels, "step": q.step or None,
                     "entropy": s.entropy, "rel_error": s.rel_error,
                     "coded_bytes": r["codebook"] + r["symbols"],
                     "bits_per_weight": r["bits_per_weight"],
                     "bits_per_nonzero": r["bits_per_nonzero"]})
    parameters = int(sum(np.size(b) for layer in net.layers for b in layer.blobs))
    report = QuantizeReport(tuple(rows), file_sizes, parameters,
                            32.0 * parameters / (8.0 * len(data)), measures, metric,
                            options.to_dict())
    return QuantizeResult(packed, report, data)
