"""YuNet in PyTorch (facekit.face.onnx_torch + yunet_torch) against onnxruntime (facekit's CPU runtime):
raw outputs of the same float32 graph, detections, the converter's operators and its refusals, and
CUDA against the CPU where a GPU is usable."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

import mediagen  # noqa: E402
from facekit import device as device_mod  # noqa: E402
from facekit import zoo  # noqa: E402
from facekit.face.onnx_torch import OnnxModule, UnsupportedOnnx  # noqa: E402
from facekit.face.yunet import YuNet, fp32_graph  # noqa: E402
from facekit.face.yunet_torch import YuNetTorch  # noqa: E402

PX_TOL = 1e-3  # pixels: float32 convolutions in two libraries
#: raw outputs: relative to each output's scale, its largest magnitude but at least 1 (the natural
#: scale of probabilities and of offsets in cells; obj_16 of a frame without faces tops at 2e-4)
RAW_RTOL = 1e-4


def _session(graph: bytes):
    so = ort.SessionOptions()
    so.log_severity_level = 3  # the graph's outputs keep their original static shapes as hints
    return ort.InferenceSession(graph, sess_options=so, providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def graph():
    return fp32_graph(zoo.resolve("yunet").path)


@pytest.fixture(scope="module")
def detectors():
    w = zoo.resolve("yunet")
    return YuNet(w), YuNetTorch(w, device="cpu")


def _blob(n: int, h: int, w: int) -> np.ndarray:
    """[n, 3, h, w] BGR float 0..255: faces at several places (the network's real activations)."""
    ims = [mediagen.face_image(size=(w, h), offset=(12 * k - 10, 5 * k)) for k in range(n)]
    return np.stack([im[:, :, ::-1].transpose(2, 0, 1) for im in ims]).astype(np.float32)


@pytest.mark.parametrize("n,h,w", [(1, 160, 224), (3, 160, 224), (1, 288, 384), (3, 288, 384)])
def test_raw_outputs_equal_onnxruntime(graph, n, h, w):
    net = OnnxModule(graph).eval()
    x = _blob(n, h, w)
    with torch.inference_mode():
        got = net(torch.from_numpy(x))
    ref = _session(graph).run(net.output_names, {"input": x})
    for name, a, b in zip(net.output_names, got, ref):
        assert a.shape == b.shape and a.dtype == torch.float32, name
        np.testing.assert_allclose(a.numpy(), b, rtol=RAW_RTOL, atol=RAW_RTOL * max(1.0, np.abs(b).max()),
                                   err_msg=name)
    assert {n for n in net.output_names} == {f"{k}_{s}" for k in ("cls", "obj", "bbox", "kps") for s in (8, 16, 32)}


def test_weights_are_buffers(graph):
    net = OnnxModule(graph)
    bufs = dict(net.named_buffers())
    assert sum(b.numel() for b in bufs.values()) > 50_000  # YuNet: ~75k weights
    assert all(b.device.type == "cpu" for b in bufs.values())
    assert net.to(torch.float64).c0.dtype == torch.float64  # .to() reaches every weight


def _images():
    """Package-made images (as tests/test_yunet.py): one face at several sizes and places, two
    faces, tiny and odd sizes, and a blank frame."""
    out = [mediagen.face_image(size=s, offset=o) for s, o in
           [((320, 240), (0, 0)), ((640, 360), (80, -20)), ((333, 251), (-30, 10)), ((96, 80), (0, 0))]]
    two = np.concatenate([mediagen.face_image((320, 240)), mediagen.face_image((320, 240), offset=(40, 0))], 1)
    out += [two, np.zeros((240, 320, 3), np.uint8), mediagen.face_image((40, 30))]
    return out


def _same(a, b, tol=PX_TOL):
    (ba, sa, ka), (bb, sb, kb) = a, b
    assert len(ba) == len(bb)
    assert ba.dtype == bb.dtype == np.float32 and ba.shape == bb.shape and ka.shape == kb.shape
    if len(ba):
        assert np.abs(ba - bb).max() < tol
        assert np.abs(ka - kb).max() < tol
        assert np.abs(sa - sb).max() < 1e-4


def test_detections_equal_onnxruntime(detectors):
    ref, det = detectors
    assert det.runtime == "torch" and det.name == ref.name == "yunet" and det.weights is ref.weights
    n = 0
    for im in _images():
        a, b = det.detect(im), ref.detect(im)
        _same(a, b)
        n += len(a[0])
    assert n >= 6  # faces were found, so the comparison compared something


def test_batch_and_tensor_input(detectors):
    ref, det = detectors
    frames = [mediagen.face_image((320, 240), offset=(o, 0)) for o in range(-40, 41, 20)]
    frames.insert(2, mediagen.face_image((200, 160)))  # a different size in the middle of the run
    single = [ref.detect(f) for f in frames]
    for a, b in zip(det.detect_batch(frames), single):
        _same(a, b)
    same_size = [f for f in frames if f.shape == frames[0].shape]
    got = det.detect_batch(torch.from_numpy(np.stack(same_size)))  # frames already a tensor
    assert len(got) == len(same_size)
    for a, b in zip(got, [ref.detect(f) for f in same_size]):
        _same(a, b)
    got = det.detect_batch(np.stack(same_size)[:, :, :-1])  # a batch array (here not contiguous)
    for a, b in zip(got, [ref.detect(np.ascontiguousarray(f[:, :-1])) for f in same_size]):
        _same(a, b)
    tiny = mediagen.face_image((40, 30))
    _same(det.detect_batch(torch.from_numpy(tiny[None]))[0], ref.detect(tiny))
    assert det.channels_last  # the CPU default; the other layout, one frame per forward pass:
    small = YuNetTorch(ref.weights, device="cpu", batch_pixels=1, channels_last=False)
    for a, b in zip(small.detect_batch(frames), single):
        _same(a, b)


def test_thresholds_are_used():
    w = zoo.resolve("yunet")
    im = np.concatenate([mediagen.face_image((320, 240)), mediagen.face_image((320, 240), offset=(40, 0))], 1)
    for score, nms in [(0.3, 0.3), (0.5, 0.9), (0.95, 0.3)]:
        _same(YuNetTorch(w, score, nms, device="cpu").detect(im), YuNet(w, score, nms).detect(im))
    assert len(YuNetTorch(w, 0.3, 0.99, device="cpu").detect(im)[0]) > len(
        YuNetTorch(w, 0.3, 0.3, device="cpu").detect(im)[0])


def test_real_frames_equal_onnxruntime(detectors, shared_data):
    import av

    ref, det = detectors
    n = 0
    for clip in ["videos/hamilton_multiface.mp4", "videos/crowd_1080p.mp4"]:
        with av.open(str(shared_data / clip)) as c:
            frames = [f.to_ndarray(format="rgb24") for i, f in zip(range(9), c.decode(video=0)) if i % 4 == 0]
        for a, b in zip(det.detect_batch(frames), ref.detect_batch(frames)):
            _same(a, b)
            n += len(a[0])
    assert n >= 20


# --------------------------------------------------------------------------- the converter

def _model(nodes, inputs, outputs, inits=()):
    from onnx import helper

    g = helper.make_graph(nodes, "t", inputs, outputs, list(inits))
    opsets = [helper.make_opsetid("", 21)]
    # the lowest IR version opset 21 allows (10): onnx 1.23 writes IR 14 by default, which onnxruntime 1.30 refuses
    return helper.make_model(g, opset_imports=opsets, ir_version=helper.find_min_ir_version_for(opsets))


def test_operators_equal_onnxruntime():
    """Each operator with settings YuNet does not use (asymmetric pads, ceil mode, dilation,
    scale 3 on an odd size, Reshape 0/-1, default Transpose, Constant) against onnxruntime."""
    from onnx import TensorProto, helper
    from onnx import numpy_helper as nh

    rng = np.random.default_rng(0)
    f32 = TensorProto.FLOAT
    inits = [nh.from_array(rng.normal(size=(6, 2, 3, 3)).astype(np.float32), "w"),
             nh.from_array(rng.normal(size=6).astype(np.float32), "b"),
             nh.from_array(np.array([1, 1, 3, 2], np.float32), "scales"),
             nh.from_array(np.array([0, 6, -1], np.int64), "shape")]
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], group=2, pads=[0, 1, 2, 1], strides=[2, 1],
                         dilations=[1, 2]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("MaxPool", ["r"], ["p"], kernel_shape=[3, 2], strides=[2, 2], pads=[1, 0, 1, 1],
                         ceil_mode=1),
        helper.make_node("Resize", ["p", "", "scales"], ["u"], mode="nearest",
                         coordinate_transformation_mode="asymmetric", nearest_mode="floor"),
        helper.make_node("Constant", [], ["k"], value=nh.from_array(np.float32([[0.5]]), "k")),
        helper.make_node("Add", ["u", "k"], ["a"]),
        helper.make_node("Sigmoid", ["a"], ["s"]),
        helper.make_node("Reshape", ["s", "shape"], ["v"]),
        helper.make_node("Transpose", ["v"], ["y"]),
    ]
    m = _model(nodes, [helper.make_tensor_value_info("x", f32, [2, 4, 13, 11])],
               [helper.make_tensor_value_info("y", f32, None)], inits)
    x = rng.normal(size=(2, 4, 13, 11)).astype(np.float32)
    ref = _session(m.SerializeToString()).run(None, {"x": x})[0]
    net = OnnxModule(m.SerializeToString())
    (got,) = net(torch.from_numpy(x))
    assert got.shape == ref.shape
    np.testing.assert_allclose(got.numpy(), ref, rtol=1e-5, atol=1e-6)


def test_unsupported_op_is_named():
    from onnx import TensorProto, helper

    v = helper.make_tensor_value_info
    m = _model([helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Softmax", ["r"], ["y"], name="head")],
               [v("x", TensorProto.FLOAT, [1, 4])], [v("y", TensorProto.FLOAT, [1, 4])])
    msg = r"'head' \(Softmax\): operator Softmax \(supported: .*Conv.*\) is not supported"
    with pytest.raises(UnsupportedOnnx, match=msg):
        OnnxModule(m)
    m = _model([helper.make_node("Resize", ["x", "", "s"], ["y"], mode="linear")],
               [v("x", TensorProto.FLOAT, [1, 1, 4, 4])], [v("y", TensorProto.FLOAT, None)],
               [onnx.numpy_helper.from_array(np.float32([1, 1, 2, 2]), "s")])
    with pytest.raises(UnsupportedOnnx, match=r"\(Resize\): mode='linear' is not supported"):
        OnnxModule(m)
    with pytest.raises(TypeError, match="ModelProto"):
        OnnxModule("model.onnx")


def test_bad_weights_and_devices_one_line(tmp_path):
    bad = tmp_path / "yunet.onnx"
    bad.write_bytes(b"not an onnx file")
    with pytest.raises(zoo.ModelError, match="yunet.onnx"):
        YuNetTorch(zoo.Resolved("yunet", bad, "explicit", zoo.sha256_of(bad)), device="cpu")
    w = zoo.resolve("yunet")
    assert device_mod.torch_device_of("CPU") == "cpu" and YuNetTorch(w, device="cpu").device == "cpu"
    with pytest.raises(device_mod.DeviceError, match="one GPU"):
        YuNetTorch(w, device="cuda:0,1")
    with pytest.raises(device_mod.DeviceError, match="expected cpu, cuda"):
        YuNetTorch(w, device="gpu")
    if not torch.cuda.is_available():
        with pytest.raises(device_mod.DeviceError, match="PyTorch cannot use CUDA") as e:
            YuNetTorch(w, device="cuda")
        assert "\n" not in str(e.value)


# --------------------------------------------------------------------------- CUDA

def test_cuda_equals_cpu(detectors):
    if not torch.cuda.is_available():
        pytest.skip("PyTorch has no CUDA")
    ref, cpu = detectors
    gpu = YuNetTorch(ref.weights, device="cuda:0")
    assert all(b.is_cuda for b in gpu.net.buffers())
    ims = _images()
    for a, b in zip(gpu.detect_batch(ims), cpu.detect_batch(ims)):
        _same(a, b, tol=1e-2)
    frames = np.stack([mediagen.face_image((1280, 720), offset=(o, 0)) for o in (-60, 0, 60)])
    on_gpu = gpu.detect_batch(torch.from_numpy(frames).cuda())
    assert sum(len(r[0]) for r in on_gpu) >= 3
    for a, b in zip(on_gpu, ref.detect_batch(list(frames))):
        _same(a, b, tol=1e-2)
