"""Tucker-1: only the output mode of a convolution kernel (Kim et al., ICLR 2016, Sec. 3.1).

``W[t, s, i, j] ≈ Σ_{r4} U4[t, r4] · C[r4, s, i, j]``, the exact truncated SVD
of the mode-4 unfolding (T × D²S), on which R4 is chosen.  The paper uses it
for the first convolution, where S = 3 is too small to decompose.  The layer
becomes ``L_tk1`` (D×D, S → g·R4, the original geometry, no bias) and
``L_tk2`` (1×1, g·R4 → T, the original bias).

References
----------
.. [1] Y.-D. Kim et al., "Compression of Deep Convolutional Neural Networks
       for Fast and Low Power Mobile Applications", ICLR 2016.
"""

from __future__ import annotations

from math import prod

import numpy as np

from caffe_tucker.compress.methods.base import ConvolutionMethod, conv_param, one_by_one
from caffe_tucker.compress.tensorly_wrapper import partial_tucker

__all__ = ["Tucker1", "METHOD"]


class Tucker1(ConvolutionMethod):
    name = "tucker1"
    rank_labels = ("R4",)
    unfolding_labels = {"output": "mode-4 (T) unfolding → R4"}
    new_types = ("Convolution",) * 2

    def unfoldings(self, kernel):
        return {"output": kernel.reshape(kernel.shape[0], -1)}

    def full_ranks(self, layer, info):
        k = self.kernel_shape(layer, info)
        return (min(k[0], prod(k[1:])),)

    def factorize(self, kernel, ranks):
        """``(core (R4, S, kh, kw), U4 (T, R4))``."""
        core, (u4,) = partial_tucker(kernel, [ranks[0]], [0])
        return core, u4

    def reconstruct(self, factors):
        core, u4 = factors
        return np.tensordot(u4, core, axes=(1, 0))

    def new_layer_params(self, layer, geo, ranks, bias):
        (r4,) = ranks
        g = geo.group
        return [
            ("Convolution", "convolution_param",
             conv_param(g * r4, geo.kernel, geo.stride, geo.pad, geo.dilation, group=g)),
            ("Convolution", "convolution_param",
             conv_param(geo.num_output, (1,) * len(geo.kernel), group=g, bias=bias)),
        ]

    def layer_blobs(self, groups, bias):
        f32 = np.float32
        first = np.concatenate([core for core, _ in groups])
        last = np.concatenate([u4 for _, u4 in groups])[:, :, None, None]
        return ((first.astype(f32),), (last.astype(f32),) + tuple(bias))

    def factors_from_blobs(self, blobs, group):
        first, last = (b[0].astype(np.float64) for b in blobs)
        r4, tg = first.shape[0] // group, last.shape[0] // group
        return [(first[k * r4:(k + 1) * r4], one_by_one(last[k * tg:(k + 1) * tg]))
                for k in range(group)]

    def ranks_from_layers(self, new_layers, group):
        return (new_layers[0].spec.convolution_param.num_output // group,)


METHOD = Tucker1()
