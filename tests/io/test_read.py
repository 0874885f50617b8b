"""Reading nets of every schema generation, weights by name, and the round trip."""

import io
import os
import threading

import numpy as np
import pytest
from google.protobuf import text_format

from caffe_tucker import load, read_caffemodel, read_net, read_prototxt
from caffe_tucker.io import caffe_pb2
from caffe_tucker.io.emit import caffemodel_chunks, write_caffemodel, write_prototxt
from caffe_tucker.errors import (CaffemodelError, InputFileError, OutputExistsError,
                                 PrototxtError, WeightsMismatchError)
from caffe_tucker.io.fillers import init_weights
from caffe_tucker.io.read import (MAX_PROTOTXT_ENV, MAX_PROTOTXT_MB, NetText, attach_weights,
                                  read_net_text, read_ranks_file)
from caffe_tucker.io.wire import encode_field, encode_varint
from caffe_tucker.analysis.shapes import KNOWN_TYPES
from conftest import ZOO, write

V1_NET = """
name: "tiny"
input: "data"
input_dim: 1 input_dim: 3 input_dim: 8 input_dim: 8
layers {
  name: "conv" type: CONVOLUTION bottom: "data" top: "conv"
  blobs_lr: 1 blobs_lr: 2 weight_decay: 1 weight_decay: 0
  convolution_param { num_output: 4 kernel_size: 3 pad: 1 }
}
layers { name: "relu" type: RELU bottom: "conv" top: "conv" }
layers { name: "fc" type: INNER_PRODUCT bottom: "conv" top: "fc" inner_product_param { num_output: 5 } }
layers { name: "prob" type: SOFTMAX bottom: "fc" top: "prob" }
"""


def test_v1_net_is_upgraded_while_reading(tmp_path):
    net = read_prototxt(write(tmp_path / "v1.prototxt", V1_NET))
    assert [l.type for l in net.layers] == ["Input", "Convolution", "ReLU", "InnerProduct", "Softmax"]
    assert net.upgrades == ("V1 layers", "net-level input")
    inp = net.layers[0]
    assert inp.name == "input" and inp.tops == ("data",)
    assert list(inp.spec.input_param.shape[0].dim) == [1, 3, 8, 8]
    conv = net.layer("conv").spec
    assert [(p.lr_mult, p.decay_mult) for p in conv.param] == [(1, 1), (2, 0)]
    assert conv.convolution_param.num_output == 4
    # Source lines are kept for messages: the 'layers' blocks start on lines 5, 10, 11, 12.
    assert [l.line for l in net.layers] == [3, 5, 10, 11, 12]
    # What is written is the current schema only.
    text = text_format.MessageToString(net.to_proto())
    assert "layers {" not in text and "input_dim" not in text and 'type: "Convolution"' in text


def test_input_shape_field_and_data_transform_upgrade(tmp_path):
    net = read_prototxt(write(tmp_path / "n.prototxt", """
input: "a" input_shape { dim: 2 dim: 3 }
layer { name: "d" type: "Data" top: "x" top: "y" data_param { source: "db" batch_size: 4 crop_size: 7 mirror: true scale: 0.5 } }
layer { name: "r" type: "ReLU" bottom: "a" top: "r" }
"""))
    assert net.upgrades == ("data transformation fields", "net-level input")
    assert list(net.layers[0].spec.input_param.shape[0].dim) == [2, 3]
    t = net.layer("d").spec.transform_param
    assert (t.crop_size, t.mirror, t.scale) == (7, True, 0.5)
    assert not net.layer("d").spec.data_param.HasField("crop_size")


def test_zoo_v1_deploys_upgrade(zoo_meta):
    for name in ("vgg16", "vgg_s"):
        assert zoo_meta(name)["format"] == "v1"
        net = read_prototxt(ZOO / name / "deploy.prototxt")
        assert "V1 layers" in net.upgrades and "net-level input" in net.upgrades
        assert net.layers[0].type == "Input"
        assert {l.type for l in net.layers} <= KNOWN_TYPES


def test_phase_filtering_follows_include_exclude(tmp_path):
    net = read_prototxt(write(tmp_path / "tv.prototxt", """
layer { name: "train_data" type: "Input" top: "data" include { phase: TRAIN } input_param { shape { dim: 8 dim: 3 } } }
layer { name: "test_data" type: "Input" top: "data" include { phase: TEST } input_param { shape { dim: 2 dim: 3 } } }
layer { name: "drop" type: "Dropout" bottom: "data" top: "data" exclude { phase: TEST } }
layer { name: "staged" type: "ReLU" bottom: "data" top: "s" include { stage: "deploy" } }
"""))
    assert [l.name for l in net.for_state("TRAIN").layers] == ["train_data", "drop"]
    assert [l.name for l in net.for_state("TEST").layers] == ["test_data"]
    assert [l.name for l in net.for_state("TEST", stages=["deploy"]).layers] == ["test_data", "staged"]


def test_v1_caffemodel_weights_match_protobuf_parse(shared_models):
    """The fast wire decoder gives exactly what the protobuf runtime parses."""
    path = shared_models / "lenet_mnist_v1format" / "lenet_iter_10000.caffemodel"
    raw = read_caffemodel(path)
    assert raw.generation == "v1"
    slow = caffe_pb2.NetParameter.FromString(path.read_bytes())
    slow_layers = {l.name: l for l in slow.layers}
    assert {l.name for l in raw.layers} == set(slow_layers)
    checked = 0
    for layer in raw.layers:
        ref = slow_layers[layer.name]
        assert len(layer.blobs) == len(ref.blobs)
        for blob, ref_blob in zip(layer.blobs, ref.blobs):
            np.testing.assert_array_equal(blob.data, np.array(ref_blob.data, dtype=np.float32))
            assert blob.legacy == (ref_blob.num, ref_blob.channels, ref_blob.height, ref_blob.width)
            checked += 1
    assert checked == 8


def test_legacy_blob_dims_are_fitted_to_the_net(shared_models):
    d = shared_models / "lenet_mnist_v1format"
    net, shapes = load(d / "lenet.prototxt", d / "lenet_iter_10000.caffemodel")
    ip1 = net.layer("ip1")
    assert [b.shape for b in ip1.blobs] == [(500, 800), (500,)]
    assert net.layer("conv1").blobs[0].shape == (20, 1, 5, 5)


def test_roundtrip_keeps_weights_and_definition(tmp_path, shared_models):
    d = shared_models / "cifar10_quick"
    net, _ = load(d / "cifar10_quick.prototxt", d / "cifar10_quick_iter_5000.caffemodel")
    write_prototxt(net, tmp_path / "out.prototxt")
    write_caffemodel(net, tmp_path / "out.caffemodel")
    again, _ = load(tmp_path / "out.prototxt", tmp_path / "out.caffemodel")
    assert [l.spec for l in again.layers] == [l.spec for l in net.layers]
    for a, b in zip(net.layers, again.layers):
        assert len(a.blobs) == len(b.blobs)
        for x, y in zip(a.blobs, b.blobs):
            assert x.shape == y.shape and np.array_equal(x, y)
    # The caffemodel we write also parses with the plain protobuf runtime, current format.
    parsed = caffe_pb2.NetParameter.FromString((tmp_path / "out.caffemodel").read_bytes())
    assert not parsed.layers and [l.name for l in parsed.layer] == [l.name for l in net.layers]
    conv1 = [l for l in parsed.layer if l.name == "conv1"][0]
    assert list(conv1.blobs[0].shape.dim) == [32, 3, 5, 5]
    np.testing.assert_array_equal(np.array(conv1.blobs[0].data, np.float32),
                                  net.layer("conv1").blobs[0].ravel())


def test_written_model_is_deterministic(tmp_path):
    net = init_weights(read_prototxt(ZOO / "alexnet" / "deploy.prototxt"), seed=3)
    a = b"".join(bytes(c) for c in caffemodel_chunks(net))
    b = b"".join(bytes(c) for c in caffemodel_chunks(net))
    assert a == b
    write_prototxt(net, tmp_path / "a.prototxt")
    with pytest.raises(OutputExistsError, match="--force"):
        write_prototxt(net, tmp_path / "a.prototxt")
    write_prototxt(net, tmp_path / "a.prototxt", force=True)


def test_writer_never_overwrites_an_input(tmp_path):
    src = write(tmp_path / "in.prototxt", V1_NET)
    net = read_prototxt(src)
    with pytest.raises(OutputExistsError, match="input file"):
        write_prototxt(net, src, force=True, inputs=[src])
    assert src.read_text() == V1_NET


@pytest.mark.parametrize("text, pattern", [
    ('layer { name: "a" type: "Input" top: "x" foo_param { bar: 1 } }',
     r":1:\d+: unknown field 'foo_param' in caffe.LayerParameter; hint: .*Caffe fork"),
    ('layer { name: "a" type: "Pooling" pooling_param { pool: MEDIAN } }',
     r":1:\d+: unknown value 'MEDIAN' .*Caffe fork"),
    ('layer { name: "a"\n  type: "Input" top: "x" ', r":2:\d+: .*hint: check the prototxt syntax"),
    ('name: "no layers"', r"defines no layers"),
    ('layers { layer { name: "c" type: "conv" } }', r"V0 net .*upgrade_net_proto_text"),
])
def test_bad_prototxt_messages(tmp_path, text, pattern):
    with pytest.raises(PrototxtError, match=pattern):
        read_prototxt(write(tmp_path / "bad.prototxt", text))


def test_bad_files(tmp_path, shared_models):
    with pytest.raises(InputFileError, match="no such prototxt"):
        read_prototxt(tmp_path / "missing.prototxt")
    model = shared_models / "cifar10_quick" / "cifar10_quick_iter_5000.caffemodel"
    with pytest.raises(InputFileError, match="binary file.*--weights"):
        read_prototxt(model)
    truncated = tmp_path / "t.caffemodel"
    truncated.write_bytes(model.read_bytes()[:100000])
    with pytest.raises(CaffemodelError, match="truncated"):
        read_caffemodel(truncated)
    text = tmp_path / "x.caffemodel"
    text.write_bytes(b"layer { name: 'x' }\n" * 10)
    with pytest.raises(CaffemodelError, match="not a Caffe model"):
        read_caffemodel(text)
    png = tmp_path / "y.caffemodel"
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)))
    with pytest.raises(CaffemodelError, match="not a Caffe model"):
        read_caffemodel(png)


def test_weights_that_do_not_fit(shared_models):
    lenet = shared_models / "lenet_mnist_v1format"
    cifar = shared_models / "cifar10_quick" / "cifar10_quick_iter_5000.caffemodel"
    # cifar10_quick's conv1 is 32x3x5x5; LeNet's is 20x1x5x5.
    with pytest.raises(WeightsMismatchError,
                       match=r"lenet.prototxt:\d+: layer 'conv1': blob 0 has shape \[32, 3, 5, 5\] "
                             r"in the caffemodel but the net needs \[20, 1, 5, 5\]"):
        load(lenet / "lenet.prototxt", cifar)


def test_unmatched_weights_are_ignored_like_caffe(tmp_path, shared_models):
    # A caffemodel layer the net does not have is ignored; net layers without weights keep none.
    net = read_net(write(tmp_path / "n.prototxt", V1_NET),
                   shared_models / "cifar10_quick" / "cifar10_quick_iter_5000.caffemodel")
    assert all(not l.blobs for l in net.layers)


def test_a_caffemodel_claiming_more_than_it_holds_is_refused(tmp_path):
    # A length prefix past the end of the file: refused from the header, nothing allocated.
    claim = tmp_path / "claim.caffemodel"
    claim.write_bytes(encode_varint((100 << 3) | 2) + encode_varint(1 << 30) + b"x" * 10)
    with pytest.raises(CaffemodelError, match="truncated"):
        read_caffemodel(claim)
    # A blob whose dims multiply to 2**80: numpy's int64 product wraps to 0, the exact one not.
    dims = encode_varint(1 << 40) * 2
    blob = b"".join(encode_field(7, b"".join(encode_field(1, dims))))
    layer = b"".join([*encode_field(1, b"c"), *encode_field(2, b"Convolution"),
                      *encode_field(7, blob)])
    huge = tmp_path / "huge.caffemodel"
    huge.write_bytes(b"".join(encode_field(100, layer)))
    net = read_prototxt(write(tmp_path / "c.prototxt", 'layer { name: "c" type: "Input" top: "c" '
                              'input_param { shape { dim: 1 } } }'))
    with pytest.raises(CaffemodelError, match=r"layer 'c': a blob of shape \[1099511627776, "
                                              r"1099511627776\] holds 0 values"):
        attach_weights(net, read_caffemodel(huge))


def test_a_prototxt_above_the_limit_is_refused_from_its_size(tmp_path, monkeypatch):
    big = write(tmp_path / "big.prototxt", V1_NET + "#" * (1 << 20))
    assert read_prototxt(big).layers  # 1 MiB: well within the default limit
    monkeypatch.setenv(MAX_PROTOTXT_ENV, "0.5")
    with pytest.raises(InputFileError, match=rf"big.prototxt: larger than the 0.5 MiB .*"
                                             rf"{MAX_PROTOTXT_ENV}"):
        read_prototxt(big)
    with pytest.raises(InputFileError, match=r"<stdin>: larger than the 0.5 MiB"):
        read_net_text(io.BytesIO(big.read_bytes()))
    small = read_net_text(io.BytesIO(V1_NET.encode()))
    assert str(small) == "<stdin>" and read_prototxt(small).source == "<stdin>"
    for bad in ("0", "-1", "nan", "lots"):
        monkeypatch.setenv(MAX_PROTOTXT_ENV, bad)
        with pytest.raises(InputFileError, match=f"{MAX_PROTOTXT_ENV}=.*positive number"):
            read_prototxt(big)
    assert MAX_PROTOTXT_MB == 64


def test_a_net_from_memory_is_named_in_messages():
    with pytest.raises(PrototxtError, match=r"^<stdin>:2:\d+: unknown field 'bogus'"):
        read_prototxt(NetText(b'name: "n"\nbogus: 1\n', "<stdin>"))
    with pytest.raises(InputFileError, match="^<stdin>: looks like a binary file"):
        read_prototxt(NetText(b"\x00\x01", "<stdin>"))


@pytest.mark.parametrize("data, pattern", [
    (None, "is a directory, expected a ranks file"),
    (b"\xff\xfe{}", r"is not UTF-8 text \(byte 0\), not a ranks file"),
    (b'{"conv1": \x00}', "looks like a binary file, not a ranks file"),
    (b'{"conv1": [1, 2}', r":1:\d+: not valid JSON"),
    (b"[1, 2]", "a ranks file is a JSON object"),
    (b"[" * 100000 + b"]" * 100000, "nested too deeply"),
])
def test_bad_ranks_files(tmp_path, data, pattern):
    path = tmp_path / "ranks.json"
    if data is None:
        path.mkdir()
    else:
        path.write_bytes(data)
    with pytest.raises(InputFileError, match=pattern):
        read_ranks_file(path)
    with pytest.raises(InputFileError, match="no such ranks file"):
        read_ranks_file(tmp_path / "missing.json")
    assert read_ranks_file(write(tmp_path / "ok.json", '{"conv2": [25, 59]}')) == {"conv2": [25, 59]}


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
def test_a_prototxt_from_a_pipe_is_read_up_to_the_limit(tmp_path, monkeypatch):
    fifo = tmp_path / "net.prototxt"
    os.mkfifo(fifo)
    writer = threading.Thread(target=fifo.write_text, args=(V1_NET,))
    writer.start()
    assert [l.name for l in read_prototxt(fifo).layers][-1] == "prob"
    writer.join()
    monkeypatch.setenv(MAX_PROTOTXT_ENV, "0.001")
    with pytest.raises(InputFileError, match=r"/dev/zero: larger than the 0.001 MiB"):
        read_prototxt("/dev/zero")  # endless: refused after one byte past the limit
