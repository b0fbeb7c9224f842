"""FAN landmarks: our batched path equals face-alignment's own FaceAlignment on the same weights.

Real FAN weights are download-only (this machine is offline), so the proof is parity on random
weights of the same architecture, saved the way face-alignment publishes them."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
fa = pytest.importorskip("face_alignment")

import facekit  # noqa: E402
from facekit import zoo  # noqa: E402
from facekit.face import fan  # noqa: E402

import mediagen  # noqa: E402


def _randomise(make, seed):
    """A network with PyTorch's default (fan-in scaled) random init and random batch-norm
    statistics, so activations stay O(1) through the four hourglasses."""
    torch.manual_seed(seed)
    net = make()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in net.state_dict().items():
            if not t.dtype.is_floating_point or t.ndim != 1:
                continue
            if name.endswith("running_var") or name.endswith(".weight"):
                t.copy_(0.5 + torch.rand(t.shape, generator=g))
            elif name.endswith("running_mean") or name.endswith(".bias"):
                t.copy_(0.1 * torch.randn(t.shape, generator=g))
    return net


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    from face_alignment.models import FAN, ResNetDepth

    d = tmp_path_factory.mktemp("fan")
    p2 = d / "2DFAN4-random.pth.tar"
    torch.save(_randomise(lambda: FAN(4), 0).state_dict(), p2)
    p3 = d / "3DFAN4-random.pth.tar"
    torch.save(_randomise(lambda: FAN(4), 1).state_dict(), p3)
    pd = d / "depth-random.pth.tar"
    depth = _randomise(ResNetDepth, 2)
    torch.save({"state_dict": {"module." + k: v for k, v in depth.state_dict().items()}}, pd)  # as published
    return {"fan2d": p2, "fan3d": p3, "fan-depth": pd}


def _resolved(name, path):
    return zoo.Resolved(name, path, "explicit", zoo.sha256_of(path))


def _reference(weights, monkeypatch, three_d):
    import face_alignment.api as api

    urls = {api.models_urls["2DFAN-4"]: weights["fan2d"], api.models_urls["3DFAN-4"]: weights["fan3d"],
            api.models_urls["depth"]: weights["fan-depth"]}
    monkeypatch.setattr(api, "load_file_from_url", lambda url, *a, **k: str(urls[url]))
    yunet = str(zoo.resolve("yunet").path)
    kind = fa.LandmarksType.THREE_D if three_d else fa.LandmarksType.TWO_D
    return fa.FaceAlignment(kind, device="cpu", flip_input=False, face_detector="yunet",
                            face_detector_kwargs={"path_to_detector": yunet}, compile=False)


def _images_and_boxes():
    from facekit.face.yunet import YuNet

    det = YuNet(zoo.resolve("yunet"))
    imgs = np.stack([mediagen.face_image(size=(320, 240), offset=(o, 0)) for o in (0, 20)])
    boxes = [det.detect(im)[0] for im in imgs]
    assert all(len(b) == 1 for b in boxes)
    # three faces over two frames: the detected one and two shifted copies of its box
    frame_idx = np.array([0, 0, 1])
    b = np.stack([boxes[0][0], boxes[0][0] + [8, -5, 8, -5], boxes[1][0]]).astype(np.float32)
    return imgs, frame_idx, b


@pytest.mark.parametrize("three_d", [False, True])
def test_batched_fan_equals_face_alignment(weights, monkeypatch, three_d):
    ref = _reference(weights, monkeypatch, three_d)
    ours = fan.Fan(_resolved("fan3d" if three_d else "fan2d", weights["fan3d" if three_d else "fan2d"]),
                   _resolved("fan-depth", weights["fan-depth"]) if three_d else None)
    imgs, frame_idx, boxes = _images_and_boxes()
    lm, sc = ours.predict_batch(imgs, frame_idx, boxes)
    assert lm.shape == (3, 68, 3 if three_d else 2) and sc.shape == (3, 68)
    for k in range(3):
        r_lm, r_sc, _ = ref.get_landmarks_from_image(imgs[frame_idx[k]].copy(),
                                                     detected_faces=[[float(v) for v in boxes[k]] + [0.9]],
                                                     return_landmark_score=True)
        np.testing.assert_allclose(lm[k], r_lm[0], rtol=1e-5, atol=1e-3)  # float32 batched vs single
        np.testing.assert_allclose(sc[k], r_sc[0], rtol=1e-4, atol=1e-5)


def test_fan_stage_through_extract(weights, clips, tmp_path):
    out = tmp_path / "fan.h5"
    s = facekit.extract([str(clips["face"])], out, progress=False, stages="landmarks", landmarker="fan2d",
                        weights={"fan2d": str(weights["fan2d"])}, batch_size=8)
    assert s.ok, s.to_dict()
    with facekit.open(out) as st:
        f = st["face.mp4"].faces
        assert f.landmarks.shape == (20, 68, 2) and f.landmarks_score.shape == (20, 68)
        assert f.attrs("landmarks")["model"] == "fan2d"
        assert f.attrs("landmarks")["weights_sha256"] == zoo.sha256_of(weights["fan2d"])


def test_fan_missing_weights_offline_says_what_to_do(clips, tmp_path):
    with pytest.raises(zoo.ModelNotFoundError, match="facekit models pull fan2d"):
        facekit.extract([str(clips["face"])], tmp_path / "x.h5", stages="landmarks", landmarker="fan2d")


def test_sha256_prefix_entries():
    f = zoo.get("fan2d").files[0]
    assert f.matches("11f355bf06" + "0" * 54) and not f.matches("0" * 64)
