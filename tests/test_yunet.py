"""YuNet in onnxruntime (facekit's runtime) against cv2.FaceDetectorYN (the reference)."""

from __future__ import annotations

import numpy as np
import pytest

import mediagen
from facekit import zoo
from facekit.face.yunet import YuNet, YuNetOpenCV, fp32_graph, nms

PX_TOL = 1e-3  # pixels: float32 convolutions in two libraries


@pytest.fixture(scope="module")
def detectors():
    w = zoo.resolve("yunet")
    return YuNet(w), YuNetOpenCV(w)


def _images():
    """Package-made images: the astronaut's face at several sizes and places, a two-face image,
    tiny and odd sizes, and a blank frame."""
    out = [mediagen.face_image(size=s, offset=o) for s, o in
           [((320, 240), (0, 0)), ((640, 360), (80, -20)), ((333, 251), (-30, 10)), ((1280, 720), (0, 0)),
            ((96, 80), (0, 0))]]
    two = np.concatenate([mediagen.face_image((320, 240)), mediagen.face_image((320, 240), offset=(40, 0))], 1)
    out += [two, np.zeros((240, 320, 3), np.uint8), mediagen.face_image((40, 30))]
    return out


def _same(a, b):
    (ba, sa, ka), (bb, sb, kb) = a, b
    assert len(ba) == len(bb)
    if len(ba):
        assert np.abs(ba - bb).max() < PX_TOL
        assert np.abs(ka - kb).max() < PX_TOL
        assert np.abs(sa - sb).max() < 1e-4


def test_equals_opencv(detectors):
    ort_det, cv_det = detectors
    n = 0
    for im in _images():
        a, b = ort_det.detect(im), cv_det.detect(im)
        _same(a, b)
        n += len(a[0])
    assert n >= 7  # faces were found, so the comparison compared something


def test_batch_equals_single(detectors):
    ort_det, _ = detectors
    frames = [mediagen.face_image((320, 240), offset=(o, 0)) for o in range(-40, 41, 10)]
    frames.insert(3, mediagen.face_image((200, 160)))  # a different size in the middle of the run
    for a, b in zip(ort_det.detect_batch(frames), [ort_det.detect(f) for f in frames]):
        _same(a, b)


def test_real_frames_equal_opencv(detectors, shared_data):
    import av

    ort_det, cv_det = detectors
    n = 0
    for clip in ["videos/hamilton_multiface.mp4", "videos/crowd_1080p.mp4"]:
        with av.open(str(shared_data / clip)) as c:
            frames = [f.to_ndarray(format="rgb24") for i, f in zip(range(12), c.decode(video=0)) if i % 4 == 0]
        for a, b in zip(ort_det.detect_batch(frames), [cv_det.detect(f) for f in frames]):
            _same(a, b)
            n += len(a[0])
    assert n >= 20


def test_nms_matches_opencv():
    import cv2

    rng = np.random.default_rng(0)
    for _ in range(20):
        xy = rng.integers(-20, 200, (40, 2))
        wh = rng.integers(0, 80, (40, 2))
        boxes = np.concatenate([xy, wh], 1)
        scores = rng.choice([0.5, 0.7, 0.81, 0.9, 0.95], 40).astype(np.float32)  # ties on purpose
        ref = cv2.dnn.NMSBoxes(boxes.tolist(), scores.tolist(), 0.6, 0.3, top_k=30)
        assert nms(boxes, scores, 0.6, 0.3, 30).tolist() == np.asarray(ref).reshape(-1).tolist()


def test_graph_is_dequantised_and_dynamic():
    import onnx

    m = onnx.load_from_string(fp32_graph(zoo.resolve("yunet").path))
    assert not any(n.op_type == "DequantizeLinear" for n in m.graph.node)
    dims = m.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in dims] == ["N", 3, "H", "W"]


def test_bad_weights_one_line(tmp_path):
    bad = tmp_path / "yunet.onnx"
    bad.write_bytes(b"not an onnx file")
    with pytest.raises(zoo.ModelError, match="yunet.onnx"):
        YuNet(zoo.Resolved("yunet", bad, "explicit", zoo.sha256_of(bad)))


def test_same_numbers_with_any_thread_count_or_batch():
    """The store must not depend on --workers (each worker gets a share of the CPUs) or on batching."""
    w = zoo.resolve("yunet")
    frames = [mediagen.face_image((320, 240), offset=(o, 0)) for o in range(-30, 31, 15)]
    one, two = YuNet(w, threads=1), YuNet(w, threads=2)
    ref = [one.detect(f) for f in frames]
    for got in (one.detect_batch(frames), two.detect_batch(frames), [two.detect(f) for f in frames]):
        for (b0, s0, k0), (b1, s1, k1) in zip(ref, got):
            assert np.array_equal(b0, b1) and np.array_equal(s0, s1) and np.array_equal(k0, k1)
