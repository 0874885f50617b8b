"""The ``.ctz`` container: exact round trips, deterministic bytes, sizes, one-line errors for every
damaged file (fuzzed), and ``pack`` / ``unpack`` on the command line and in real Caffe."""

from __future__ import annotations

import hashlib
import json
import random
import struct
import zlib

import numpy as np
import pytest

from caffe_tucker.errors import CaffeTuckerError, InputFileError, WeightsMismatchError
from caffe_tucker.io.emit import caffemodel_chunks, prototxt_text
from caffe_tucker.io.read import NetText, read_prototxt
from caffe_tucker.model import load_model
from caffe_tucker.quantize.codebook import QuantizedBlob, decode
from caffe_tucker.quantize.container import (CODECS, MAGIC, ContainerError, Packed,
                                             caffemodel_net, container_sizes, pack_bytes,
                                             read_container, unpack_bytes, write_container)
from conftest import TEST_MODELS, ZOO

DIGITS = (ZOO / "digits" / "deploy.prototxt", ZOO / "digits" / "digits.caffemodel")
CIFAR = (TEST_MODELS / "cifar10_quick" / "cifar10_quick.prototxt",
         TEST_MODELS / "cifar10_quick" / "cifar10_quick_iter_5000.caffemodel")
TINY = """name: "tiny"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 2 dim: 4 dim: 4 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 3 kernel_size: 3 } }
layer { name: "fc" type: "InnerProduct" bottom: "conv" top: "fc" inner_product_param { num_output: 4 } }
"""


# --- building models by hand ---------------------------------------------------------------------

def bare(net):
    return net.with_layers(layer.with_blobs(()) for layer in net.layers)


def all_blobs(net) -> dict:
    return {(layer.name, i): b for layer in net.layers for i, b in enumerate(layer.blobs)}


def hand_quantized(net, k: int, seed: int, dithered: bool, zeros: float = 0.5) -> Packed:
    """Every weight blob (blob 0) quantized to random symbols with a share of pruned zeros and a
    random codebook of ``k`` entries; the other blobs raw."""
    rng = np.random.default_rng(seed)
    quantized, raw = [], {}
    for (layer, i), blob in all_blobs(net).items():
        if i != 0:
            raw[(layer, i)] = blob
            continue
        symbols = rng.integers(1, k + 1, size=blob.shape).astype(np.uint16 if k > 255 else np.uint8)
        symbols[rng.random(blob.shape) < zeros] = 0
        codebook = rng.normal(0, 0.1, k).astype(np.float32)
        quantized.append(QuantizedBlob(
            layer=layer, blob=0, shape=blob.shape, symbols=symbols, codebook=codebook,
            method="dithered" if dithered else "kmeans", step=0.0375 if dithered else 0.0,
            dither_seed=int(rng.integers(0, 2**32)) if dithered else None))
    return Packed(net=bare(net), quantized=tuple(quantized), raw=raw,
                  meta={"test": "hand_quantized", "k": k})


def pruned_and_quantized(net, share: float = 0.9, levels: int = 16) -> Packed:
    """The digits net with the smallest ``share`` of each weight blob pruned and the rest mapped
    to the nearest of ``levels`` evenly spaced values: what a quantizer would give."""
    quantized, raw = [], {}
    for (layer, i), blob in all_blobs(net).items():
        if i != 0:
            raw[(layer, i)] = blob
            continue
        w = blob.reshape(-1)
        codebook = np.linspace(w.min(), w.max(), levels).astype(np.float32)
        symbols = (np.abs(w[:, None] - codebook[None]).argmin(axis=1) + 1).astype(np.uint8)
        symbols[np.abs(w) < np.quantile(np.abs(w), share)] = 0
        quantized.append(QuantizedBlob(layer, 0, blob.shape, symbols, codebook, "uniform",
                                       float(codebook[1] - codebook[0])))
    return Packed(net=bare(net), quantized=tuple(quantized), raw=raw)


@pytest.fixture(scope="module")
def digits():
    return load_model(*DIGITS).net


@pytest.fixture(scope="module")
def tiny():
    net = read_prototxt(NetText(TINY.encode(), "tiny.prototxt"))
    rng = np.random.default_rng(3)
    shapes = {"conv": [(3, 2, 3, 3), (3,)], "fc": [(4, 12), (4,)]}
    return net.with_layers(layer.with_blobs(rng.normal(size=s).astype(np.float32)
                                            for s in shapes.get(layer.name, []))
                           for layer in net.layers)


@pytest.fixture(scope="module")
def tiny_packed(tiny):
    """A small container's model: conv dithered (K=5), fc k-means (K=3), biases raw."""
    quantized = [q for q in hand_quantized(tiny, 5, 1, True).quantized if q.layer == "conv"]
    quantized += [q for q in hand_quantized(tiny, 3, 2, False).quantized if q.layer == "fc"]
    return Packed(bare(tiny), tuple(quantized),
                  {k: v for k, v in all_blobs(tiny).items() if k[1] == 1}, codec="zlib")


def bits(a) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)


# --- round trips ---------------------------------------------------------------------------------

@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("k, dithered", [(3, False), (3, True), (300, True), (300, False)])
def test_round_trip_is_exact_and_the_bytes_deterministic(digits, codec, k, dithered):
    packed = hand_quantized(digits, k, seed=k + dithered, dithered=dithered)
    packed = Packed(packed.net, packed.quantized, packed.raw, codec, packed.meta)
    data = pack_bytes(packed)
    back = unpack_bytes(data, "digits.ctz")
    assert back.codec == codec and back.meta == packed.meta
    assert prototxt_text(back.net) == prototxt_text(packed.net)
    assert len(back.quantized) == len(packed.quantized)
    for q, r in zip(packed.quantized, back.quantized):
        assert (r.layer, r.blob, tuple(r.shape), r.method, r.step, r.dither_seed) == \
               (q.layer, q.blob, tuple(q.shape), q.method, q.step, q.dither_seed)
        assert r.symbols.dtype == (np.uint16 if k > 255 else np.uint8)
        assert np.array_equal(r.symbols.reshape(-1), q.symbols.reshape(-1))
        assert np.array_equal(bits(r.codebook), bits(q.codebook))
        assert np.array_equal(bits(decode(r)), bits(decode(q)))
    assert back.raw.keys() == packed.raw.keys()
    for key, array in packed.raw.items():
        assert np.array_equal(bits(back.raw[key]), bits(array))
    decoded = {(q.layer, q.blob): decode(q) for q in packed.quantized} | dict(packed.raw)
    for key, blob in all_blobs(caffemodel_net(back)).items():
        assert np.array_equal(bits(blob), bits(decoded[key])), key
    assert pack_bytes(packed) == data
    assert pack_bytes(back) == data  # what is read back packs to the same bytes


def test_the_bytes_do_not_depend_on_the_order_given(digits):
    packed = hand_quantized(digits, 7, seed=0, dithered=True)
    shuffled = Packed(packed.net, packed.quantized[::-1], dict(reversed(packed.raw.items())),
                      meta=dict(reversed(packed.meta.items())))
    assert pack_bytes(shuffled) == pack_bytes(packed)


def test_pruned_weights_decode_to_exact_zeros_even_with_dither(digits):
    back = unpack_bytes(pack_bytes(hand_quantized(digits, 16, seed=5, dithered=True, zeros=0.7)))
    net = caffemodel_net(back)
    for q in back.quantized:
        w = net.layer(q.layer).blobs[0]
        pruned = q.symbols.reshape(w.shape) == 0
        assert pruned.any() and (bits(w[pruned]) == 0).all()  # +0.0, bit for bit
        assert (w[~pruned] != 0).all()


@pytest.mark.parametrize("files", [DIGITS, CIFAR], ids=["digits", "cifar10_quick"])
def test_a_plain_model_packed_raw_gives_back_the_same_caffemodel(files):
    net = load_model(*files).net
    packed = Packed(bare(net), raw=all_blobs(net))
    back = caffemodel_net(unpack_bytes(pack_bytes(packed)))
    assert b"".join(caffemodel_chunks(back)) == b"".join(caffemodel_chunks(net))


def test_a_pruned_quantized_model_is_much_smaller_than_its_caffemodel(digits):
    caffemodel = DIGITS[1].stat().st_size
    packed = pruned_and_quantized(digits)
    for codec in CODECS:
        data = pack_bytes(Packed(packed.net, packed.quantized, packed.raw, codec))
        assert len(data) < caffemodel / 20, codec  # 90% zeros, 4 bits a weight at most
    raw = pack_bytes(Packed(packed.net, raw=all_blobs(digits)))
    assert len(raw) < caffemodel  # float32 values barely compress


def test_sizes_add_up_and_name_every_quantized_blob(digits):
    packed = pruned_and_quantized(digits)
    data = pack_bytes(packed)
    sizes = container_sizes(packed)
    parts = (sizes["preamble"] + sizes["header"] + sizes["net"] + sizes["raw"] + sizes["trailer"]
             + sum(r["codebook"] + r["symbols"] for r in sizes["quantized"]))
    assert sizes["total"] == parts == len(data)
    assert [(r["layer"], r["blob"]) for r in sizes["quantized"]] == \
           [("conv1", 0), ("conv2", 0), ("conv3", 0), ("fc1", 0), ("fc2", 0)]
    fc1 = sizes["quantized"][3]
    assert fc1["weights"] == 128 * 64 * 4 * 4 and fc1["k"] == 16 and fc1["codebook"] == 64
    assert fc1["nonzero"] == packed.quantized[3].nonzero
    assert fc1["bits_per_nonzero"] == 8 * (fc1["codebook"] + fc1["symbols"]) / fc1["nonzero"] < 16
    assert sizes["raw_values"] == sum(a.size for a in packed.raw.values())
    from_bytes = container_sizes(data)
    assert {k: v for k, v in from_bytes.items() if k != "quantized"} == \
           {k: v for k, v in sizes.items() if k != "quantized"}
    assert all(r.items() <= s.items() for r, s in zip(from_bytes["quantized"], sizes["quantized"]))


def test_what_pack_refuses(digits, tiny, tiny_packed):
    def refused(exc, words, **changes):
        fields = dict(net=tiny_packed.net, quantized=tiny_packed.quantized, raw=tiny_packed.raw,
                      codec=tiny_packed.codec)
        with pytest.raises(exc, match=words):
            pack_bytes(Packed(**{**fields, **changes}))

    conv, fc = tiny_packed.quantized
    bias = dict(tiny_packed.raw)
    refused(ValueError, "'codec' parameter of Packed must be one of bz2, lzma, zlib",
            codec="gzip")
    big = np.array(conv.symbols).reshape(-1)
    big[0] = 6
    refused(ValueError, r"must be in \[0, 5\]",
            quantized=(QuantizedBlob("conv", 0, conv.shape, big, conv.codebook), fc))
    refused(ValueError, "given once", raw={**bias, ("conv", 0): tiny.layer("conv").blobs[0]})
    refused(ValueError, "a layer of the net", raw={**bias, ("nope", 0): np.zeros(3, np.float32)})
    refused(ValueError, "float32 array", raw={**bias, ("conv", 1): np.zeros(3)})
    refused(ValueError, "dither_seed", quantized=(QuantizedBlob(
        "conv", 0, conv.shape, conv.symbols, conv.codebook, step=0.1, dither_seed=2**32), fc))
    refused(ValueError, "JSON", meta={"x": float("nan")})
    refused(ValueError, "blob 1 is stored but not blob 0", quantized=(fc,))
    refused(WeightsMismatchError, r"blob 1 has shape \[5\].*needs \[3\]",
            raw={**bias, ("conv", 1): np.zeros(5, np.float32)})
    refused(WeightsMismatchError, "has 1 blobs, the net expects 2",
            raw={("fc", 1): bias[("fc", 1)]})


# --- damaged and foreign files -------------------------------------------------------------------

def split(data: bytes):
    """(header dict, payload bytes) of a container."""
    head = struct.unpack_from("<I", data, 12)[0]
    return json.loads(data[24:24 + head]), data[24 + head:-32]


def reseal(header: dict, payload: bytes, version: int = 1, flags: int = 0,
           crcs: bool = True) -> bytes:
    """A container with ``header`` and ``payload`` whose CRCs (with ``crcs``), lengths and
    SHA-256 are all right: only the checks after the checksums can refuse it."""
    if crcs:
        sections = [header["net"], header["raw"]]
        for q in header.get("quantized", ()):
            sections += [q["codebook"], q["symbols"]]
        for s in sections:
            s["crc32"] = zlib.crc32(payload[s["offset"]:s["offset"] + s["length"]])
    head = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    body = struct.pack("<8sHHIQ", MAGIC, version, flags, len(head),
                       24 + len(head) + len(payload) + 32) + head + payload
    return body + hashlib.sha256(body).digest()


def refuses(data: bytes, words: str, exc=ContainerError):
    with pytest.raises(exc) as info:
        unpack_bytes(data, "m.ctz")
    message = str(info.value)
    assert "\n" not in message and message.startswith("m.ctz") and words in message, message
    return message


def test_foreign_truncated_and_newer_files(tiny_packed):
    data = pack_bytes(tiny_packed)
    refuses(b"", "is not a .ctz container (it is empty)")
    refuses(DIGITS[1].read_bytes(), "is not a .ctz container (it starts with b'\\n\\x06digits")
    refuses(b"CTZ\x01" + data[4:], "is not a .ctz container")
    refuses(data[:10], f"truncated: at least 56 bytes expected, 10 got")
    refuses(data[:-1], f"truncated: {len(data):,} bytes expected, {len(data) - 1:,} got")
    refuses(data + b"\0\0", f"2 bytes follow the end of the .ctz container")
    refuses(data[:8] + struct.pack("<H", 2) + data[10:],
            "format version 2, newer than the version 1 this caffe_tucker reads; hint: upgrade")
    refuses(data[:8] + struct.pack("<H", 0) + data[10:], "format version 0, which does not exist")
    header, payload = split(data)
    assert reseal(header, payload) == data  # the helper writes what pack writes
    refuses(reseal(header, payload, flags=1), "flags 0x0001, which format version 1 does not define")
    refuses(reseal({**header, "codec": "zstd"}, payload),
            "unknown codec 'zstd' (this caffe_tucker knows bz2, lzma, zlib)")


def test_a_damaged_section_is_named(tiny_packed):
    data = pack_bytes(tiny_packed)
    header, payload = split(data)
    start = len(data) - 32 - len(payload)
    symbols = header["quantized"][1]["symbols"]
    at = start + symbols["offset"] + symbols["length"] // 2
    damaged = data[:at] + bytes([data[at] ^ 0x10]) + data[at + 1:]
    refuses(damaged, "checksum mismatch in the symbols of layer 'fc' blob 0")
    at = start + header["raw"]["offset"]
    refuses(data[:at] + bytes([data[at] ^ 1]) + data[at + 1:], "checksum mismatch in the raw blobs")
    refuses(data[:30] + b"?" + data[31:], "checksum mismatch in the preamble, the header or the trailer")
    refuses(data[:-1] + bytes([data[-1] ^ 1]), "checksum mismatch in the preamble, the header")
    # a CRC that disagrees while the SHA-256 agrees (a writer's fault, not a copy's)
    header["net"]["crc32"] ^= 1
    refuses(reseal(header, payload, crcs=False), "checksum mismatch in the net (its CRC-32")


def replace_section(header: dict, payload: bytes, pick, new: bytes) -> bytes:
    """The payload with the section ``pick(header)`` holding ``new`` instead (the header's
    offsets and lengths changed to match, in place)."""
    entry = pick(header)
    sections = [header["net"]] + [x for q in header["quantized"]
                                  for x in (q["codebook"], q["symbols"])] + [header["raw"]]
    end = entry["offset"] + entry["length"]
    for s in sections:
        if s["offset"] >= end and s is not entry:
            s["offset"] += len(new) - entry["length"]
    entry["length"] = len(new)
    return payload[:entry["offset"]] + new + payload[end:]


def test_values_a_sound_file_must_not_hold(tiny_packed):
    header, payload = split(pack_bytes(tiny_packed))

    def copy():
        return json.loads(json.dumps(header))

    h = copy()
    symbols = np.zeros(54, np.uint8)
    symbols[7] = 9  # K = 5
    p = replace_section(h, payload, lambda h: h["quantized"][0]["symbols"],
                        zlib.compress(symbols.tobytes(), 9))
    refuses(reseal(h, p), "layer 'conv' blob 0: symbol 9 is out of range of its codebook of 5 "
            "entries (symbols 0..5)")
    h = copy()
    p = replace_section(h, payload, lambda h: h["quantized"][0]["codebook"],
                        np.float32([1, 2, np.inf, 4, 5]).tobytes())
    refuses(reseal(h, p), "the codebook holds values that are not finite")
    h = copy()
    h["quantized"][0]["k"] = 4
    refuses(reseal(h, payload), "a codebook of 4 entries takes 16 bytes, the header says 20")
    h = json.loads(json.dumps(header))
    h["raw"]["blobs"][0]["shape"] = [1, 3]
    refuses(reseal(h, payload), "blob 1 has shape [1, 3] in the caffemodel but the net needs [3]",
            WeightsMismatchError)
    h = json.loads(json.dumps(header))
    h["raw"]["blobs"][0]["layer"] = "nope"
    refuses(reseal(h, payload), "layer 'nope': blobs for a layer the net does not have")
    h = json.loads(json.dumps(header))
    h["quantized"][1]["layer"] = "conv"
    refuses(reseal(h, payload), "layer 'conv' blob 0 is stored twice")
    h = json.loads(json.dumps(header))
    h["quantized"][0]["dither_seed"] = 2**32
    refuses(reseal(h, payload), "'quantized[0].dither_seed' must be null or an integer in")
    h = json.loads(json.dumps(header))
    h["quantized"][0]["shape"] = [3, 2, 3, -3]
    refuses(reseal(h, payload), "corrupt header: 'quantized[0].shape' must be a list of integers")
    h = json.loads(json.dumps(header))
    h["net"]["size"] += 1
    refuses(reseal(h, payload), "the net decompresses to")
    h = json.loads(json.dumps(header))
    h["quantized"][0]["shape"] = [10**6, 10**6, 10**6]
    h["quantized"][0]["symbols"]["size"] = 10**18
    with pytest.raises(CaffeTuckerError, match="would need .* GiB of memory"):
        unpack_bytes(reseal(h, payload), "m.ctz")


def test_truncated_anywhere_or_flipped_anywhere_is_one_clean_error(tiny_packed):
    """Every prefix of a small container, and a byte changed at 600 seeded places: always a
    one-line ContainerError, never another exception."""
    rng = random.Random(12)
    for codec in CODECS:
        data = pack_bytes(Packed(tiny_packed.net, tiny_packed.quantized, tiny_packed.raw, codec))
        assert len(data) < 2000
        for n in range(len(data)):
            with pytest.raises(ContainerError):
                unpack_bytes(data[:n], "m.ctz")
        for _ in range(200):
            at = rng.randrange(len(data))
            damaged = bytearray(data)
            damaged[at] ^= rng.randrange(1, 256)
            with pytest.raises(ContainerError) as info:
                unpack_bytes(bytes(damaged), "m.ctz")
            assert "\n" not in str(info.value)


def test_resealed_damage_is_one_clean_error_or_a_model(tiny_packed):
    """Damage that the checksums would not see (they are recomputed): the payload's bytes and
    the header's values changed at seeded places.  Decoding either succeeds or fails with a
    CaffeTuckerError; nothing else escapes."""
    rng = random.Random(7)
    values = [-1, 0, 1, 2, 7, 2**31, 2**32, 2**64, 10**30, 1e308, 0.5, "x", "", None, True, [], {},
              [2, 3], {"offset": 0}]

    def leaves(obj, path=()):
        items = obj.items() if isinstance(obj, dict) else enumerate(obj)
        for k, v in items:
            if isinstance(v, (dict, list)) and v:
                yield from leaves(v, path + (k,))
            yield path + (k,)

    outcomes = {"ok": 0, "refused": 0}
    for codec in CODECS:
        data = pack_bytes(Packed(tiny_packed.net, tiny_packed.quantized, tiny_packed.raw, codec))
        header, payload = split(data)
        paths = list(leaves(header))
        for case in range(150):
            h = json.loads(json.dumps(header))
            p = bytearray(payload)
            if case % 2:  # the payload: its CRCs recomputed
                for _ in range(rng.randint(1, 3)):
                    p[rng.randrange(len(p))] ^= rng.randrange(1, 256)
            else:  # a value of the header (the CRCs it holds included)
                *parent, key = rng.choice(paths)
                node = h
                for k in parent:
                    node = node[k]
                node[key] = rng.choice(values)
            try:
                caffemodel_net(unpack_bytes(reseal(h, bytes(p), crcs=bool(case % 2)), "m.ctz"))
                outcomes["ok"] += 1
            except CaffeTuckerError as exc:
                assert "\n" not in str(exc)
                outcomes["refused"] += 1
    assert outcomes["refused"] > 100


# --- files and the command line ------------------------------------------------------------------

def test_write_and_read_a_container(tmp_path, tiny_packed):
    path = write_container(tiny_packed, tmp_path / "m.ctz")
    assert path.read_bytes() == pack_bytes(tiny_packed)
    assert pack_bytes(read_container(path)) == pack_bytes(tiny_packed)
    with pytest.raises(CaffeTuckerError, match="already exists; hint: pass --force"):
        write_container(tiny_packed, path)
    write_container(tiny_packed, path, force=True)
    with pytest.raises(CaffeTuckerError, match="refusing to write over the input"):
        write_container(tiny_packed, path, force=True, inputs=[path])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.ctz"]  # no temporaries
    with pytest.raises(InputFileError, match=f"{tmp_path / 'x.ctz'}: no such .ctz container"):
        read_container(tmp_path / "x.ctz")


@pytest.fixture
def model_dir(tmp_path):
    for f in DIGITS + (ZOO / "digits" / "model.json",):
        (tmp_path / f.name).write_bytes(f.read_bytes())
    return tmp_path


def test_pack_then_unpack(cli, model_dir):
    proto, weights = model_dir / "deploy.prototxt", model_dir / "digits.caffemodel"
    code, out, err = cli("pack", proto, "--codec", "lzma")  # weights found beside the net
    assert code == 0, err
    ctz = model_dir / "digits.ctz"
    assert f"wrote {ctz}" in out and "caffemodel 753,515 bytes -> container" in out
    assert read_container(ctz).codec == "lzma"
    assert read_container(ctz).meta == {"packed_by": "pack", "prototxt": "deploy.prototxt",
                                        "weights": "digits.caffemodel"}
    code, _, err = cli("pack", proto)
    assert code == 1 and "already exists; hint: pass --force" in err
    assert cli("pack", proto, "--weights", weights, "--force")[0] == 0
    assert read_container(ctz).codec == "bz2"

    code, out, err = cli("unpack", "--check", ctz)
    assert code == 0 and out.startswith(f"{ctz}: OK: format version 1, codec bz2, 0 quantized "
                                        "blobs, 10 raw"), err
    code, out, err = cli("unpack", ctz)
    assert code == 0, err
    unpacked = model_dir / "digits_unpacked"
    assert sorted(p.name for p in unpacked.iterdir()) == ["deploy.prototxt", "weights.caffemodel"]
    assert (unpacked / "weights.caffemodel").read_bytes() == \
           b"".join(caffemodel_chunks(load_model(proto, weights).net))
    code, _, err = cli("unpack", ctz)
    assert code == 1 and "pass --force" in err
    assert cli("unpack", ctz, "--force")[0] == 0
    assert sorted(p.name for p in model_dir.iterdir()) == [
        "deploy.prototxt", "digits.caffemodel", "digits.ctz", "digits_unpacked", "model.json"]

    damaged = bytearray(ctz.read_bytes())
    damaged[len(damaged) // 2] ^= 4
    (model_dir / "damaged.ctz").write_bytes(bytes(damaged))
    for argv in (["unpack", "--check", model_dir / "damaged.ctz"],
                 ["unpack", model_dir / "damaged.ctz", "-o", model_dir / "out"]):
        code, _, err = cli(*argv)
        assert code == 1 and len(err.strip().splitlines()) == 1
        assert "damaged.ctz: checksum mismatch in the raw blobs" in err
    assert not (model_dir / "out").exists()


def test_pack_without_weights(cli, tmp_path):
    (tmp_path / "net.prototxt").write_text(TINY)
    code, _, err = cli("pack", tmp_path / "net.prototxt")
    assert code == 1 and "no weights given and no net.caffemodel beside it" in err


def test_unpack_check_reports_bits_per_weight(cli, tmp_path, digits):
    write_container(pruned_and_quantized(digits), tmp_path / "q.ctz")
    code, out, err = cli("unpack", "--check", tmp_path / "q.ctz")
    assert code == 0, err
    assert "5 quantized blobs, 5 raw" in out and "fc1 blob 0: 131,072 weights, 16 levels" in out


# --- real Caffe ----------------------------------------------------------------------------------

def test_unpacked_models_run_in_caffe(caffe, cli, model_dir, digits):
    """Raw: the unpacked model computes exactly what the original does.  Quantized: Caffe runs
    the decoded weights (checked against the numpy stand-in of Caffe on the same weights)."""
    from fake_runtime import FakeRuntime

    x = np.random.default_rng(0).uniform(0, 1, (5, 1, 8, 8)).astype(np.float32)
    proto, weights = model_dir / "deploy.prototxt", model_dir / "digits.caffemodel"
    want = caffe.forward(proto, weights, {"data": x}, ["fc2"])["fc2"]
    assert cli("pack", proto, "-o", model_dir / "raw.ctz")[0] == 0
    assert cli("unpack", model_dir / "raw.ctz", "-o", model_dir / "raw")[0] == 0
    got = caffe.forward(model_dir / "raw" / "deploy.prototxt",
                        model_dir / "raw" / "weights.caffemodel", {"data": x}, ["fc2"])["fc2"]
    assert np.array_equal(got, want)

    packed = hand_quantized(digits, 16, seed=9, dithered=True, zeros=0.9)
    write_container(packed, model_dir / "q.ctz")
    assert cli("unpack", model_dir / "q.ctz", "-o", model_dir / "q")[0] == 0
    got = caffe.forward(model_dir / "q" / "deploy.prototxt", model_dir / "q" / "weights.caffemodel",
                        {"data": x}, ["fc2"])["fc2"]
    expected = FakeRuntime().forward(caffemodel_net(packed), None, {"data": x}, ["fc2"])["fc2"]
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
    assert not np.allclose(got, want, atol=1e-3)  # quantized weights: other outputs
