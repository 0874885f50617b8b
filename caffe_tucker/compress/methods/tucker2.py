"""Tucker-2: a D×D convolution as 1×1 → D×D → 1×1 convolutions (Kim et al., ICLR 2016, eq. 2).

With a Caffe kernel ``W`` of shape ``(T, S, D, D)`` (one group)::

    W[t, s, i, j] ≈ Σ_{r3, r4} C[r4, r3, i, j] · U3[s, r3] · U4[t, r4]

computed by HOOI over the two channel modes, started from the truncated
HOSVD (:func:`caffe_tucker.compress.hooi.tucker2_hooi`).  R3 is
chosen on the mode-3 unfolding (S × D²T), R4 on the mode-4 unfolding (T × D²S).

The layer becomes ``L_tk1`` (1×1, S → g·R3, no bias), ``L_tk2`` (D×D,
g·R3 → g·R4, the original stride/pad/dilation, no bias) and ``L_tk3`` (1×1,
g·R4 → T, the original bias), all with the original ``group`` g; group k's
factors occupy the k-th block of channels of each.

A fully connected layer reading an (N, C, H, W) map (AlexNet's fc6 over pool5)
is decomposed as an H×W convolution over that map, and written as ``L_tk1``
(1×1 Convolution, C → R3) → ``L_tk2`` (InnerProduct, R3·H·W → R4) → ``L_tk3``
(InnerProduct, R4 → T, the bias): the same products (the core reshaped to
(R4, R3·H·W) in Caffe's C-major flattening), the original (N, T) output, and
batched.  Written as an H×W convolution instead, Caffe runs one GEMM per
image (its CPU convolution loops over the batch), and measured on AlexNet's
fc6 the InnerProduct form is 3.8× faster at batch 8 and 5.7× at batch 32
(issue 13), where the convolution form is slower than the uncompressed layer.

References
----------
.. [1] Y.-D. Kim et al., "Compression of Deep Convolutional Neural Networks
       for Fast and Low Power Mobile Applications", ICLR 2016.
.. [2] L. R. Tucker, "Some mathematical notes on three-mode factor analysis",
       Psychometrika 31(3), 1966.
"""

from __future__ import annotations

import numpy as np

from caffe_tucker.compress.methods.base import (Method, conv_kernel_groups, conv_kernel_shape,
                                                conv_param, geometry_of, one_by_one,
                                                spatial_2d_reason)
from caffe_tucker.compress.hooi import tucker2_hooi

__all__ = ["Tucker2", "METHOD"]


class Tucker2(Method):
    name = "tucker2"
    rank_labels = ("R3", "R4")
    unfolding_labels = {"input": "mode-3 (S) unfolding → R3", "output": "mode-4 (T) unfolding → R4"}
    new_types = ("Convolution",) * 3
    applies_to_types = ("Convolution", "InnerProduct")

    def why_not(self, layer, info):
        if layer.type == "Convolution":
            return spatial_2d_reason(layer, info)
        if layer.type == "InnerProduct":
            p = layer.spec.inner_product_param
            if p.transpose:
                return "InnerProduct with transpose: true is not supported"
            if p.axis != 1 or len(info.inputs[0]) != 4:
                return ("tucker2 applies to a fully connected layer only when it reads a spatial "
                        "map (N, C, H, W) with axis 1; use svd")
            return None
        return f"a {layer.type} layer has no kernel to decompose (only Convolution and InnerProduct)"

    def kernel_shape(self, layer, info):
        if layer.type == "InnerProduct":
            return (info.params[0][0],) + tuple(info.inputs[0][1:])
        return conv_kernel_shape(info)

    def kernel_groups(self, layer, info):
        if layer.type == "InnerProduct":
            w = layer.blobs[0]
            return [w.reshape((w.shape[0],) + tuple(info.inputs[0][1:]))]
        return conv_kernel_groups(layer, info)

    def unfoldings(self, kernel):
        return {"input": kernel.transpose(1, 0, 2, 3).reshape(kernel.shape[1], -1),
                "output": kernel.reshape(kernel.shape[0], -1)}

    def full_ranks(self, layer, info):
        k = self.kernel_shape(layer, info)
        return (k[1], k[0])

    def factorize(self, kernel, ranks):
        """``(U3 (S, R3), core (R4, R3, kh, kw), U4 (T, R4))``."""
        r3, r4 = ranks
        core, (u4, u3) = tucker2_hooi(kernel, (r4, r3))
        return u3, core, u4

    def reconstruct(self, factors):
        u3, core, u4 = factors
        return np.einsum("abij,sb,ta->tsij", core, u3, u4, optimize=True)

    def geometry(self, layer, info):
        return geometry_of(layer, info, whole_map=True)

    def new_types_for(self, layer):
        if layer.type == "InnerProduct":
            return ("Convolution", "InnerProduct", "InnerProduct")
        return self.new_types

    def new_layer_params(self, layer, geo, ranks, bias):
        r3, r4 = ranks
        g = geo.group
        ones = (1,) * len(geo.kernel)
        if layer.type == "InnerProduct":  # see the module docstring: batched, the same products
            return [
                ("Convolution", "convolution_param", conv_param(r3, ones)),
                ("InnerProduct", "inner_product_param", {"num_output": int(r4), "bias_term": False}),
                ("InnerProduct", "inner_product_param",
                 {"num_output": int(geo.num_output), "bias_term": bool(bias)}),
            ]
        return [
            ("Convolution", "convolution_param", conv_param(g * r3, ones, group=g)),
            ("Convolution", "convolution_param",
             conv_param(g * r4, geo.kernel, geo.stride, geo.pad, geo.dilation, group=g)),
            ("Convolution", "convolution_param", conv_param(geo.num_output, ones, group=g, bias=bias)),
        ]

    def layer_blobs(self, groups, bias):
        f32 = np.float32
        first = np.concatenate([u3.T for u3, _, _ in groups])[:, :, None, None]
        middle = np.concatenate([core for _, core, _ in groups])
        last = np.concatenate([u4 for _, _, u4 in groups])[:, :, None, None]
        return ((first.astype(f32),), (middle.astype(f32),), (last.astype(f32),) + tuple(bias))

    def factors_from_blobs(self, blobs, group):
        """The factors per group; an InnerProduct core (R4, R3·H·W) comes back as
        (R4, R3, H·W, 1), whose reconstruction reshapes to the original (T, C·H·W) weights."""
        first, middle, last = (b[0].astype(np.float64) for b in blobs)
        r3, r4, tg = first.shape[0] // group, middle.shape[0] // group, last.shape[0] // group
        if middle.ndim == 2:
            middle = middle.reshape(middle.shape[0], r3, -1, 1)
        return [(one_by_one(first[k * r3:(k + 1) * r3]).T, middle[k * r4:(k + 1) * r4],
                 one_by_one(last[k * tg:(k + 1) * tg])) for k in range(group)]

    def ranks_from_layers(self, new_layers, group):
        middle = new_layers[1].spec
        r4 = (middle.inner_product_param.num_output if middle.type == "InnerProduct"
              else middle.convolution_param.num_output)
        return (new_layers[0].spec.convolution_param.num_output // group, r4 // group)


METHOD = Tucker2()
