"""A plain numpy forward pass of Convolution / InnerProduct, Caffe's semantics, for tests."""

import numpy as np


def conv2d(x, w, b=None, stride=(1, 1), pad=(0, 0), dilation=(1, 1), group=1):
    """Caffe's convolution: x (N, C, H, W), w (T, C/group, kh, kw) -> (N, T, H', W')."""
    n, c, h, wd = x.shape
    t, cg, kh, kw = w.shape
    sh, sw = stride
    ph, pw = pad
    dh, dw = dilation
    xp = np.zeros((n, c, h + 2 * ph, wd + 2 * pw), dtype=np.float64)
    xp[:, :, ph:ph + h, pw:pw + wd] = x
    oh = (h + 2 * ph - (dh * (kh - 1) + 1)) // sh + 1
    ow = (wd + 2 * pw - (dw * (kw - 1) + 1)) // sw + 1
    out = np.zeros((n, t, oh, ow), dtype=np.float64)
    tg = t // group
    for g in range(group):
        xs = xp[:, g * cg:(g + 1) * cg]
        ws = w[g * tg:(g + 1) * tg].astype(np.float64)
        for i in range(kh):
            for j in range(kw):
                patch = xs[:, :, i * dh: i * dh + sh * (oh - 1) + 1: sh,
                           j * dw: j * dw + sw * (ow - 1) + 1: sw]
                out[:, g * tg:(g + 1) * tg] += np.einsum("ncyx,tc->ntyx", patch, ws[:, :, i, j])
    if b is not None:
        out += b.reshape(1, -1, 1, 1)
    return out


def inner_product(x, w, b=None, axis=1):
    lead = x.shape[:axis]
    y = x.reshape(int(np.prod(lead)), -1).astype(np.float64) @ w.astype(np.float64).T
    if b is not None:
        y += b
    return y.reshape(lead + (w.shape[0],))


def run_layers(net, shapes, x_blobs):
    """Forward the Convolution/InnerProduct/ReLU layers of ``net`` in numpy from ``x_blobs``."""
    blobs = dict(x_blobs)
    for layer in net.layers:
        if layer.type == "Input":
            continue
        x = blobs[layer.bottoms[0]]
        if layer.type == "Convolution":
            g = shapes.layers[layer.name].geometry
            y = conv2d(x, layer.blobs[0], layer.blobs[1] if len(layer.blobs) > 1 else None,
                       g.stride, g.pad, g.dilation, g.group)
        elif layer.type == "InnerProduct":
            y = inner_product(x, layer.blobs[0], layer.blobs[1] if len(layer.blobs) > 1 else None,
                              layer.spec.inner_product_param.axis)
        elif layer.type == "ReLU":
            y = np.maximum(x, 0)
        else:
            raise NotImplementedError(layer.type)
        blobs[layer.tops[0]] = y
    return blobs
