"""Codebook fine-tuning in real Caffe: each shared value moves by the average gradient of its
weights.

After quantization every weight of a quantized blob is a shared value, ``c[k]`` for a weight with
symbol ``1 + k`` (less its dither, ``c[k] - u_i``, for the dithered quantizer), or exactly 0 for a
pruned weight (symbol 0).  Fine-tuning keeps the symbols — which weight shares which value, and
which are pruned — and trains only the shared values.  :func:`finetune_codebooks` drives a
:class:`~caffe_tucker.caffe.pycaffe.TrainingSession` whose solver does nothing (``base_lr`` 0, no
momentum, no weight decay); each iteration:

1. the quantized layers' weights are set to ``decode(q)`` (the one decoding rule) for the current
   codebooks;
2. Caffe runs forward and backward on the iteration's minibatch, and the gradient ``g`` of each
   quantized blob is fetched before the (null) update;
3. for every codebook entry ``k``: ``h[k] <- momentum * h[k] + lr * mean(g_i : symbol_i = 1 + k)``
   and ``c[k] <- c[k] - h[k]`` (Caffe's SGD convention); an entry no weight uses keeps its
   value.  Since ``d w_i / d c[k] = 1`` for every weight mapped to ``k`` (the dither is a
   constant), the mean is the gradient of the loss with respect to ``c[k]`` divided by the
   number of weights that share it (the patent's average; Han et al. sum instead).

Pruned weights are never written but as 0.0, the symbols never change, and everything else in the
net (biases, layers that are not quantized) keeps its value.  The minibatch of iteration ``i`` is
``train.batch(i, batch, seed)``, so a run is a function of its inputs.  The test measure
(accuracy or PSNR, :func:`caffe_tucker.sparsity.schedule.evaluate`) is taken in Caffe with the
decoded weights before and after.

References
----------
Y. Choi, M. El-Khamy and J. Lee, "Universal Deep Neural Network Compression",
arXiv:1802.02271, 2018.
Y. Choi, M. El-Khamy and J. Lee, US patent 11,423,312 (shared quantized values fine-tuned with the
average gradient of the weights mapped to them).
S. Han, H. Mao and W. J. Dally, "Deep Compression: Compressing Deep Neural Networks with Pruning,
Trained Quantization and Huffman Coding", ICLR 2016.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Callable, Sequence

import numpy as np

from caffe_tucker.errors import CaffeTuckerError, check_param
from caffe_tucker.graph import Net
from caffe_tucker.io.emit import caffemodel_chunks, prototxt_text
from caffe_tucker.model import Model
from caffe_tucker.quantize.codebook import QuantizedBlob, decode
from caffe_tucker.quantize.quantizer import decoded_net
from caffe_tucker.sparsity.data import EvalSet, TrainSet
from caffe_tucker.sparsity.schedule import check_data, evaluate
from caffe_tucker.sparsity.train_net import build_solver, build_train_net

__all__ = ["CodebookRow", "CodebookRun", "finetune_codebooks", "average_gradients",
           "codebook_step"]


@dataclass(frozen=True)
class CodebookRow:
    """One iteration of codebook fine-tuning.

    Attributes
    ----------
    iteration : int
        1-based.
    loss : float
        The training loss of the iteration's forward pass (with the codebooks before its update).
    shift : float
        The largest change of a shared value in this iteration, over all codebooks.
    """

    iteration: int
    loss: float
    shift: float

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class CodebookRun:
    """What :func:`finetune_codebooks` produced.

    Attributes
    ----------
    quantized : tuple of QuantizedBlob
        The fine-tuned records: the input's symbols, step and dither seed with new codebooks.
    net : Net
        The deploy net with their decoded weights.
    rows : tuple of CodebookRow
        One per iteration.
    metric : str
        ``accuracy`` or ``psnr``.
    before, after : float
        The test measure in Caffe with the input's and the fine-tuned decoded weights.
    options : dict
        ``iterations``, ``lr``, ``momentum``, ``batch``, ``seed``.
    """

    quantized: tuple
    net: Net = field(repr=False)
    rows: tuple = field(repr=False)
    metric: str = "accuracy"
    before: float = 0.0
    after: float = 0.0
    options: dict = field(default_factory=dict)


def average_gradients(q: QuantizedBlob, grad: np.ndarray) -> np.ndarray:
    """Per codebook entry ``k``, the mean of ``grad`` over the weights with symbol ``1 + k``
    (0.0 for an entry no weight uses); float64, shape ``(K,)``.

    Parameters
    ----------
    q : QuantizedBlob
    grad : array_like
        The gradient of the loss with respect to the decoded weights, shaped like ``q``.

    References
    ----------
    Y. Choi, M. El-Khamy and J. Lee, US patent 11,423,312.
    """
    g = np.asarray(grad, dtype=np.float64)
    if g.size != int(np.prod(q.shape)):
        raise ValueError(f"The 'grad' parameter of average_gradients must have the shape of "
                         f"layer '{q.layer}' blob {q.blob}, {tuple(q.shape)}. Got {g.shape} "
                         "instead.")
    sym = np.asarray(q.symbols).reshape(-1).astype(np.int64)
    k = int(np.size(q.codebook))
    kept = sym != 0
    sums = np.bincount(sym[kept] - 1, weights=g.reshape(-1)[kept], minlength=k)
    counts = np.bincount(sym[kept] - 1, minlength=k)
    return np.where(counts > 0, sums / np.maximum(counts, 1), 0.0)


def codebook_step(codebook: np.ndarray, mean_grad: np.ndarray, history: np.ndarray, lr: float,
                  momentum: float) -> tuple[np.ndarray, np.ndarray]:
    """One SGD step of a codebook: ``h = momentum h + lr g``, ``c = c - h``.

    Returns the new ``(codebook, history)`` (float64); the inputs are left as they are.
    """
    h = momentum * np.asarray(history, dtype=np.float64) + lr * np.asarray(mean_grad, np.float64)
    return np.asarray(codebook, dtype=np.float64) - h, h


def _caffemodel(net: Net) -> bytes:
    return b"".join(caffemodel_chunks(net))


def _check(model: Model, quantized, iterations, lr, momentum, batch, seed) -> tuple:
    owner = "finetune_codebooks"

    def is_int(v):
        return isinstance(v, int) and not isinstance(v, bool)

    def is_real(v):
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

    check_param("iterations", iterations, is_int(iterations) and iterations >= 0, "an int >= 0",
                owner)
    check_param("lr", lr, is_real(lr) and lr > 0, "a finite float > 0", owner)
    check_param("momentum", momentum, is_real(momentum) and 0 <= momentum < 1,
                "a float in [0, 1)", owner)
    check_param("batch", batch, is_int(batch) and batch >= 1, "an int >= 1", owner)
    check_param("seed", seed, is_int(seed) and seed >= 0, "an int >= 0", owner)
    qs = tuple(quantized) if isinstance(quantized, (list, tuple)) else None
    ok = bool(qs) and all(isinstance(q, QuantizedBlob) for q in qs)
    if not ok:
        raise ValueError(f"The 'quantized' parameter of {owner} must be a non-empty sequence of "
                         f"QuantizedBlob. Got {type(quantized).__name__} instead.")
    where = model.net.source or str(model.prototxt)
    names = [q.layer for q in qs]
    for q in qs:
        if q.blob != 0:
            raise CaffeTuckerError(f"layer '{q.layer}': codebook fine-tuning trains the weights "
                                   f"(blob 0), not blob {q.blob}")
        if names.count(q.layer) > 1:
            raise CaffeTuckerError(f"layer '{q.layer}' is quantized twice; give one record per "
                                   "layer")
        try:
            layer = model.net.layer(q.layer)
        except KeyError:
            raise CaffeTuckerError(f"{where}: no layer '{q.layer}' for its quantized weights") \
                from None
        if not layer.blobs:
            raise CaffeTuckerError(f"{where}: layer '{q.layer}' has no weights to fine-tune")
    return qs


def finetune_codebooks(model: Model, quantized: Sequence[QuantizedBlob], train: TrainSet,
                       test: EvalSet, runtime, *, iterations: int, lr: float,
                       momentum: float = 0.9, batch: int = 32, seed: int = 0,
                       train_net: Net | None = None,
                       on_iteration: Callable[[CodebookRow], None] | None = None) -> CodebookRun:
    """Fine-tune the shared values of ``quantized`` in Caffe; see the module docstring.

    Parameters
    ----------
    model : Model
        The deploy net and its weights (those of the quantized blobs are replaced by the decoded
        ones; the rest is used as it is).
    quantized : sequence of QuantizedBlob
        The weights (blob 0) of distinct layers, e.g. :func:`~.quantizer.quantize_net`'s.
    train : TrainSet
        Training samples (one array per input of the train net, and ``label``).
    test : EvalSet
        Test items and their measure.
    runtime : CaffeRuntime
        The pycaffe worker (``open_training``, ``forward``).
    iterations : int
        Codebook updates (one minibatch each).
    lr : float
        The step on the average gradient.
    momentum : float
        Momentum of the codebook updates (0 for none).
    batch : int
        The minibatch.
    seed : int
        Draws the minibatches (and seeds Caffe's solver).
    train_net : Net, optional
        The train net; built from the deploy net when None (as ``sparsify`` builds it).
    on_iteration : callable, optional
        Told of each :class:`CodebookRow`.

    Returns
    -------
    CodebookRun

    References
    ----------
    Y. Choi, M. El-Khamy and J. Lee, "Universal Deep Neural Network Compression",
    arXiv:1802.02271, 2018.
    """
    qs = _check(model, quantized, iterations, lr, momentum, batch, seed)
    deploy = model.net
    start = decoded_net(deploy, qs)            # checks every record's shape against the net
    if train_net is None:
        train_net = build_train_net(deploy, train.sample_shapes(), batch,
                                    classifier=test.metric == "accuracy")
    check_data(deploy, train_net, train, test)
    deploy_text = prototxt_text(deploy)
    before = evaluate(runtime, deploy_text, _caffemodel(start), test)

    # the solver moves nothing: the tool applies the update to the codebooks
    solver = build_solver(0.0, momentum=0.0, weight_decay=0.0, seed=seed)
    layers = [q.layer for q in qs]
    codebooks = [np.asarray(q.codebook, dtype=np.float64) for q in qs]
    history = [np.zeros(c.size) for c in codebooks]
    current = list(qs)
    rows = []
    session = runtime.open_training(solver, prototxt_text(train_net), _caffemodel(start),
                                    seed=seed)
    try:
        for i in range(iterations):
            session.set_params({q.layer: [decode(q)] for q in current})
            res = session.step(train.batch(i, batch, seed), fetch_diffs=layers)
            shift = 0.0
            for j, q in enumerate(current):
                g = average_gradients(q, res.diffs[q.layer])
                codebooks[j], history[j] = codebook_step(codebooks[j], g, history[j], lr,
                                                         momentum)
                new = q.with_codebook(codebooks[j])
                if new.codebook.size:
                    shift = max(shift, float(np.max(np.abs(
                        new.codebook.astype(np.float64) - q.codebook))))
                current[j] = new
            row = CodebookRow(i + 1, float(res.loss), shift)
            rows.append(row)
            if on_iteration:
                on_iteration(row)
    finally:
        session.close()
    net = decoded_net(deploy, current)
    after = evaluate(runtime, deploy_text, _caffemodel(net), test) if iterations else before
    options = dict(iterations=iterations, lr=float(lr), momentum=float(momentum), batch=batch,
                   seed=seed)
    return CodebookRun(tuple(current), net, tuple(rows), test.metric, before, after, options)
