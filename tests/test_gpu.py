"""The GPU path on a CUDA machine: the CuPy crop kernel equals the NumPy path (bit for bit) and
cv2.warpAffine (within 1 grey level), FAN on CUDA equals FAN on the CPU, and `extract --device
cuda` gives the CPU's results whatever the number of workers. Skipped where no GPU is usable
(CI); run them with `pytest tests/test_gpu.py` on a GPU machine (bench/gpu.py measures the same)."""

from __future__ import annotations

import numpy as np
import pytest

cp = pytest.importorskip("cupy")
try:
    _ok = bool(cp.cuda.is_available())
except Exception:  # noqa: BLE001
    _ok = False
if not _ok:
    pytest.skip("no CUDA GPU usable through CuPy", allow_module_level=True)

from facekit.face import align  # noqa: E402
from facekit.face.warp_gpu import warp_crops_cuda  # noqa: E402

import mediagen  # noqa: E402

YUNET_TORCH_TOL_PX = 1e-3  # YuNet on CUDA (PyTorch) vs onnxruntime: as tests/test_yunet_torch.py's PX_TOL


def _sim(scale, deg, tx, ty):
    a = np.deg2rad(deg)
    return np.array([[scale * np.cos(a), -scale * np.sin(a), tx], [scale * np.sin(a), scale * np.cos(a), ty]])


def _affines(rng, K, H, W, S):
    Ms = []
    for _ in range(K):
        M = _sim(rng.uniform(0.05, 3.0), rng.uniform(-180, 180), 0, 0)
        cx, cy = rng.uniform(-0.2, 1.2) * W, rng.uniform(-0.2, 1.2) * H   # some crops run off the image
        M[:, 2] = S / 2 - M[:, :2] @ [cx, cy]
        Ms.append(M)
    Ms.append(_sim(1.0, 0, -5000, -5000))                               # entirely outside
    Ms.append(_sim(1.0, 0, 0.0, 0.0))                                   # plain copy of the top-left corner
    Ms.append(np.array([[0.7, 0.2, -10.3], [-0.1, 1.3, 4.7]]))           # general affine
    Ms.append(np.full((2, 3), np.nan))                                  # failed alignment
    return np.stack(Ms)


@pytest.mark.parametrize("border,value", [("constant", 0), ("constant", 77), ("replicate", 0)])
def test_kernel_equals_numpy_and_cv2(border, value):
    import cv2

    rng = np.random.default_rng(11)
    B, H, W, S = 6, 181, 263, 64
    imgs = rng.integers(0, 256, (B, H, W, 3), dtype=np.uint8)
    imgs[:, 20:90, 30:170] = 255
    imgs[1] = cv2.GaussianBlur(imgs[1], (0, 0), 1.5)
    Ms = _affines(rng, 200, H, W, S)
    fidx = rng.integers(0, B, len(Ms))
    got = warp_crops_cuda(imgs, fidx, Ms, S, border=border, border_value=value)
    assert isinstance(got, cp.ndarray) and got.shape == (len(Ms), S, S, 3) and got.dtype == cp.uint8
    got = got.get()
    np.testing.assert_array_equal(got, align.warp_crops_xp(imgs, fidx, Ms, S, xp=np, border=border,
                                                           border_value=value))
    if int(cv2.__version__.split(".")[0]) < 5:  # OpenCV 5 changed warpAffine's arithmetic (up to 7 levels)
        ref = np.stack([align.warp_crops(imgs[f], M[None], S, border=border, border_value=value)[0]
                        for f, M in zip(fidx, Ms)])
        diff = np.abs(got.astype(int) - ref.astype(int))
        assert diff.max() <= 1 and (diff == 0).mean() > 0.999
    assert (got[-1] == value).all()
    if border == "constant":
        assert (got[-4] == value).all()
    np.testing.assert_array_equal(got[-3], imgs[fidx[-3], :S, :S])


def test_kernel_inputs_on_gpu_channels_and_empty():
    rng = np.random.default_rng(3)
    imgs = rng.integers(0, 256, (2, 50, 70, 1), dtype=np.uint8)
    Ms = _affines(rng, 10, 50, 70, 24)
    fidx = rng.integers(0, 2, len(Ms))
    got = warp_crops_cuda(cp.asarray(imgs), cp.asarray(fidx), cp.asarray(Ms), 24)
    np.testing.assert_array_equal(got.get(), align.warp_crops_xp(imgs, fidx, Ms, 24, xp=np))
    assert warp_crops_cuda(imgs, np.zeros(0, int), np.zeros((0, 2, 3)), 24).shape == (0, 24, 24, 1)
    one = warp_crops_cuda(imgs[0], [0], Ms[:1], 24).get()
    np.testing.assert_array_equal(one, align.warp_crops_xp(imgs[0], [0], Ms[:1], 24, xp=np))
    with pytest.raises(ValueError, match="out of range"):
        warp_crops_cuda(imgs, [5], Ms[:1], 24)
    with pytest.raises(TypeError):
        warp_crops_cuda(imgs.astype(np.float32), [0], Ms[:1], 24)


def test_kernel_on_720p_batch():
    rng = np.random.default_rng(5)
    B, H, W, S = 8, 720, 1280, 112
    imgs = rng.integers(0, 256, (B, H, W, 3), dtype=np.uint8)
    Ms = _affines(rng, 256, H, W, S)
    fidx = rng.integers(0, B, len(Ms))
    np.testing.assert_array_equal(warp_crops_cuda(imgs, fidx, Ms, S).get(),
                                  align.warp_crops_xp(imgs, fidx, Ms, S, xp=np))


# --------------------------------------------------------------------------- FAN and the engine

def _torch_cuda():
    torch = pytest.importorskip("torch")
    pytest.importorskip("face_alignment")
    if not torch.cuda.is_available():
        pytest.skip("PyTorch has no CUDA")
    return torch


@pytest.fixture(scope="module")
def fan_weights(tmp_path_factory):
    torch = _torch_cuda()
    from face_alignment.models import FAN

    torch.manual_seed(0)
    net = FAN(4)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # random weights with O(1) activations (as tests/test_fan.py)
        for name, t in net.state_dict().items():
            if t.dtype.is_floating_point and t.ndim == 1:
                if name.endswith("running_var") or name.endswith(".weight"):
                    t.copy_(0.5 + torch.rand(t.shape, generator=g))
                elif name.endswith("running_mean") or name.endswith(".bias"):
                    t.copy_(0.1 * torch.randn(t.shape, generator=g))
    p = tmp_path_factory.mktemp("fan") / "2DFAN4-random.pth"
    torch.save(net.state_dict(), p)
    return p


FAN_TOL_PX = 0.05  # landmark agreement CUDA (fp32, no TF32) vs CPU, pixels
# Random weights give nearly flat heatmaps, whose arg-max can jump between near-equal maxima on
# float32 noise: the bulk of the points must agree, and the heatmaps themselves closely.
FAN_AGREE = 0.99


def _agree(a, b):
    d = np.linalg.norm(a - b, axis=-1)
    return (d < FAN_TOL_PX).mean()


def test_fan_cuda_equals_cpu(fan_weights):
    from facekit import zoo
    from facekit.face import fan
    from facekit.face.yunet import YuNet

    det = YuNet(zoo.resolve("yunet"))
    imgs = np.stack([mediagen.face_image(size=(320, 240), offset=(o, 0)) for o in (0, 20, -15)])
    boxes = np.concatenate([det.detect(im)[0] for im in imgs])
    fidx = np.arange(len(imgs))
    res = zoo.Resolved("fan2d", fan_weights, "explicit", zoo.sha256_of(fan_weights))
    lc, sc = fan.Fan(res, device="cpu").predict_batch(imgs, fidx, boxes)
    gpu = fan.Fan(res, device="cuda:0")
    assert next(gpu.net.parameters()).is_cuda
    lg, sg = gpu.predict_batch(imgs, fidx, boxes)
    assert _agree(lc, lg) >= FAN_AGREE and np.abs(sc - sg).max() < 1e-3


def _clip(path, n=12, offset=0):
    """A small H.264 clip written with PyAV (GPU machines may have no ffmpeg binary)."""
    import av

    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=25)
        s.width, s.height, s.pix_fmt = 320, 240, "yuv420p"
        for i, fr in enumerate(mediagen.face_frames(n + offset, size=(320, 240))):
            if i >= offset:
                for p in s.encode(av.VideoFrame.from_ndarray(fr, format="rgb24")):
                    c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


def _faces(out, key):
    import facekit

    with facekit.open(out) as st:
        v = st[key]
        return {k: np.asarray(v.faces[k]) for k in ("box", "landmarks", "crop")}, v.attrs["stage_params"]


def test_extract_cuda_equals_cpu_any_workers(fan_weights, tmp_path):
    import facekit

    pytest.importorskip("av")
    clips = [_clip(tmp_path / "a.mp4"), _clip(tmp_path / "b.mp4", n=8, offset=5)]
    opts = dict(stages="detect,track,landmarks,align,crop", landmarker="fan2d", weights={"fan2d": str(fan_weights)},
                progress=False)
    runs = {"cpu": facekit.extract(clips, tmp_path / "cpu.h5", device="cpu", **opts),
            "cuda1": facekit.extract(clips, tmp_path / "cuda1.h5", device="cuda:0", **opts),
            "cuda2": facekit.extract(clips, tmp_path / "cuda2.h5", device="cuda", workers_per_device=2, **opts)}
    assert all(s.ok and len(s.processed) == 2 for s in runs.values())
    for r in runs["cpu"].results:
        cpu, pc = _faces(tmp_path / "cpu.h5", r.key)
        g1, p1 = _faces(tmp_path / "cuda1.h5", r.key)
        g2, p2 = _faces(tmp_path / "cuda2.h5", r.key)
        assert len(cpu["box"]) > 0
        for k in cpu:  # one worker or two: the same bytes
            np.testing.assert_array_equal(g1[k], g2[k])
        # YuNet in onnxruntime (CPU) vs PyTorch (CUDA): the same network, sums in another order
        np.testing.assert_allclose(cpu["box"], g1["box"], rtol=0, atol=YUNET_TORCH_TOL_PX)
        assert _agree(cpu["landmarks"], g1["landmarks"]) >= FAN_AGREE
        import cv2

        if int(cv2.__version__.split(".")[0]) < 5:  # the CPU crops are cv2.warpAffine's
            assert np.abs(cpu["crop"].astype(int) - g1["crop"].astype(int)).max() <= 1
        assert p1 == p2 and p1["crop"]["device"] == "cuda" and p1["landmarks"]["device"] == "cuda"
        assert "device" not in pc["crop"] and "device" not in pc["landmarks"]
