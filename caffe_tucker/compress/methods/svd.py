"""SVD: a fully connected layer as two (Kim et al., ICLR 2016, Sec. 3.1).

``W[n, k] ≈ Σ_r U[n, r] · C[r, k]``, the exact truncated SVD of the (N × K)
weight matrix, whose rank R is chosen on that matrix.  The layer becomes two
InnerProduct layers ``L_tk1`` (K → R, no bias) and ``L_tk2`` (R → N, the
original bias), on the original ``axis``.

References
----------
.. [1] Y.-D. Kim et al., "Compression of Deep Convolutional Neural Networks
       for Fast and Low Power Mobile Applications", ICLR 2016.
.. [2] C. Eckart, G. Young, "The approximation of one matrix by another of
       lower rank", Psychometrika 1(3), 1936.
"""

from __future__ import annotations

import numpy as np

from caffe_tucker.compress.methods.base import Method, geometry_of
from caffe_tucker.compress.tensorly_wrapper import partial_tucker

__all__ = ["SVD", "METHOD"]


class SVD(Method):
    name = "svd"
    rank_labels = ("R",)
    unfolding_labels = {"matrix": "weight matrix → R"}
    new_types = ("InnerProduct",) * 2
    applies_to_types = ("InnerProduct",)

    def why_not(self, layer, info):
        if layer.type == "InnerProduct":
            if layer.spec.inner_product_param.transpose:
                return "InnerProduct with transpose: true is not supported"
            return None
        if layer.type == "Convolution":
            return "svd applies to fully connected layers; use tucker1 or tucker2 for a convolution"
        return f"a {layer.type} layer has no kernel to decompose (only Convolution and InnerProduct)"

    def kernel_shape(self, layer, info):
        return tuple(info.params[0])

    def kernel_groups(self, layer, info):
        return [layer.blobs[0]]

    def unfoldings(self, kernel):
        return {"matrix": kernel}

    def full_ranks(self, layer, info):
        return (min(self.kernel_shape(layer, info)),)

    def factorize(self, kernel, ranks):
        """``(C (R, K), U (N, R))`` with ``U @ C ≈ W``."""
        core, (u,) = partial_tucker(kernel, [ranks[0]], [0])
        return core, u

    def reconstruct(self, factors):
        core, u = factors
        return u @ core

    def geometry(self, layer, info):
        return geometry_of(layer, info)

    def new_layer_params(self, layer, geo, ranks, bias):
        axis = layer.spec.inner_product_param.axis
        return [
            ("InnerProduct", "inner_product_param",
             {"num_output": int(ranks[0]), "bias_term": False, "axis": axis}),
            ("InnerProduct", "inner_product_param",
             {"num_output": geo.num_output, "bias_term": bias, "axis": axis}),
        ]

    def layer_blobs(self, groups, bias):
        ((core, u),) = groups
        return ((core.astype(np.float32),), (u.astype(np.float32),) + tuple(bias))

    def factors_from_blobs(self, blobs, group):
        return [(blobs[0][0].astype(np.float64), blobs[1][0].astype(np.float64))]

    def ranks_from_layers(self, new_layers, group):
        return (new_layers[0].spec.inner_product_param.num_output,)


METHOD = SVD()
