"""The GPU path, proven and measured: crop kernel, FAN on CUDA, and `facekit extract --device cuda`.

    python bench/gpu.py [--frames 32] [--faces 256] [--clip-seconds 10] [--yunet PATH] [--landmarker dlib68]

Needs a CUDA GPU with CuPy and a CUDA build of PyTorch (plus face-alignment for FAN). Prints:

  device     the GPU, CUDA, CuPy, PyTorch, CPU cores
  kernel     the CuPy warp of K ArcFace crops (112 px) from B 1280x720 frames in one launch:
             equality with the NumPy path (warp_crops_xp, bit for bit) and with cv2.warpAffine
             (within 1 grey level), faces/s of the kernel alone (frames already on the GPU), of
             upload + kernel + download, and of cv2.warpAffine on the CPU (one crop per call)
  fan        FAN-4 (random weights: the speed does not depend on them; their nearly flat heatmaps
             make the arg-max agreement a worst case) on faces of 720p frames: landmark distance
             CUDA vs CPU (pixels) and heatmap difference, without and with TF32, and faces/s
  extract    `facekit.extract` of a generated 1280x720 clip (three moving faces) with stages
             detect,track,landmarks(fan2d),align,crop on --device cpu and cuda: frames/s, the
             time spent in each stage, and whether the two stores hold the same crops/landmarks
  workers    --worker-clips such clips on one GPU with each --per-device value of
             --workers-per-device: frames/s, and whether the stores are identical
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

W, H = 1280, 720
CROP = 112


def device_line() -> str:
    import cupy as cp
    import torch

    props = cp.cuda.runtime.getDeviceProperties(0)
    return (f"{props['name'].decode()} ({props['totalGlobalMem'] / 2**30:.0f} GiB), CUDA runtime "
            f"{cp.cuda.runtime.runtimeGetVersion()}, driver {cp.cuda.runtime.driverGetVersion()}, "
            f"CuPy {cp.__version__}, PyTorch {torch.__version__}, {os.cpu_count()} CPU cores, "
            f"Python {platform.python_version()}")


def _frames(n: int, rng) -> np.ndarray:
    """n 720p RGB frames: noise with smooth regions and hard edges (a worst case for rounding)."""
    import cv2

    f = rng.integers(0, 256, (n, H, W, 3), dtype=np.uint8)
    for i in range(n):
        if i % 2:
            f[i] = cv2.GaussianBlur(f[i], (0, 0), 2.0)
        f[i, 100:300, 200:500] = 255
    return f


def _arcface_affines(rng, k: int, b: int):
    """k image -> crop ArcFace affines: faces of 40..400 px, any rotation, some off the frame."""
    from facekit.face import align

    tpl = align.template("arcface", CROP)
    ms = []
    for _ in range(k):
        s = rng.uniform(40, 400) / CROP
        a = np.deg2rad(rng.uniform(-40, 40))
        R = s * np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
        c = np.array([rng.uniform(-0.05, 1.05) * W, rng.uniform(-0.05, 1.05) * H])
        pts = (tpl - CROP / 2) @ R.T + c
        ms.append(align.similarity_from_points(pts, tpl))
    return np.stack(ms), rng.integers(0, b, k)


def _time(fn, sync=None, repeat=10) -> float:
    fn()
    if sync:
        sync()
    t0 = time.perf_counter()
    for _ in range(repeat):
        fn()
    if sync:
        sync()
    return (time.perf_counter() - t0) / repeat


def bench_kernel(n_frames: int, n_faces: int) -> None:
    import cupy as cp
    import cv2

    from facekit.face import align
    from facekit.face.warp_gpu import warp_crops_cuda

    rng = np.random.default_rng(0)
    frames = _frames(n_frames, rng)
    M, fidx = _arcface_affines(rng, n_faces, n_frames)
    sync = cp.cuda.Device().synchronize
    for border in ("constant", "replicate"):
        got = warp_crops_cuda(frames, fidx, M, CROP, border=border).get()
        ref_np = align.warp_crops_xp(frames, fidx, M, CROP, xp=np, border=border)
        ref_cv = np.stack([align.warp_crops(frames[f], m[None], CROP, border=border)[0] for f, m in zip(fidx, M)])
        d = np.abs(got.astype(int) - ref_cv.astype(int))
        print(f"kernel  {border:9s} {n_faces} crops from {n_frames} frames {W}x{H}: equal to NumPy path: "
              f"{np.array_equal(got, ref_np)}; vs cv2.warpAffine max |diff| {d.max()}, "
              f"identical values {100 * (d == 0).mean():.4f} %")
    g_frames = cp.asarray(frames)
    t_kernel = _time(lambda: warp_crops_cuda(g_frames, fidx, M, CROP), sync, 50)
    t_full = _time(lambda: warp_crops_cuda(frames, fidx, M, CROP).get(), sync, 10)
    t_up = _time(lambda: cp.asarray(frames), sync, 10)
    t_cv = _time(lambda: [cv2.warpAffine(frames[f], m, (CROP, CROP), flags=cv2.INTER_LINEAR)
                          for f, m in zip(fidx, M)], None, 5)
    print(f"kernel  faces/s: CuPy kernel (frames on GPU) {n_faces / t_kernel:,.0f} "
          f"({t_kernel * 1e3:.2f} ms per launch); upload {frames.nbytes / 2**20:.0f} MiB + kernel + download "
          f"{n_faces / t_full:,.0f} ({t_full * 1e3:.1f} ms, of which upload {t_up * 1e3:.1f} ms); "
          f"cv2.warpAffine on CPU {n_faces / t_cv:,.0f} ({cv2.getNumThreads()} OpenCV threads)")


def _randomised_fan(seed: int = 0):
    import torch
    from face_alignment.models import FAN

    torch.manual_seed(seed)
    net = FAN(4)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # as tests/test_fan.py: O(1) activations through the four hourglasses
        for name, t in net.state_dict().items():
            if not t.dtype.is_floating_point or t.ndim != 1:
                continue
            if name.endswith("running_var") or name.endswith(".weight"):
                t.copy_(0.5 + torch.rand(t.shape, generator=g))
            elif name.endswith("running_mean") or name.endswith(".bias"):
                t.copy_(0.1 * torch.randn(t.shape, generator=g))
    return net


def _scene(i: int, n_faces: int = 3) -> np.ndarray:
    """Frame i of the test scene: n astronaut faces (~170..280 px) drifting over a gradient."""
    import mediagen

    bg = mediagen._background(W, H, "gradient").copy()
    for j in range(n_faces):
        face = mediagen._scaled_face(W, H, (0.3, 0.4, 0.25)[j % 3])
        fh, fw = face.shape[:2]
        x = int(80 + j * 400 + 30 * np.sin(0.07 * i + j))
        y = int((H - fh) / 2 + 40 * np.cos(0.05 * i + 2 * j))
        x, y = min(max(x, 0), W - fw), min(max(y, 0), H - fh)
        bg[y:y + fh, x:x + fw] = face
    return bg


def bench_fan(weights_path: str, yunet: str | None) -> None:
    import torch

    from facekit import zoo
    from facekit.face import fan
    from facekit.face.yunet import YuNet

    det = YuNet(zoo.resolve("yunet", {"yunet": yunet} if yunet else None))
    imgs = np.stack([_scene(i) for i in range(0, 64, 2)])
    boxes, fidx = [], []
    for i, im in enumerate(imgs):
        b = det.detect(im)[0]
        boxes += list(b[:, :4])
        fidx += [i] * len(b)
    boxes, fidx = np.array(boxes, np.float32), np.array(fidx)
    res = zoo.Resolved("fan2d", Path(weights_path), "explicit", zoo.sha256_of(weights_path))
    cpu = fan.Fan(res, device="cpu")
    gpu = fan.Fan(res, device="cuda:0")
    lc, sc_c = cpu.predict_batch(imgs, fidx, boxes)
    lg, sc_g = gpu.predict_batch(imgs, fidx, boxes)
    print(f"fan     {len(boxes)} faces from {len(imgs)} 720p frames, CUDA vs CPU: {_lm_diff(lc, lg)}; "
          f"scores max |diff| {np.abs(sc_c - sc_g).max():.2e}; heatmaps {_heat_diff(cpu, gpu, imgs[:1])}")
    exact = gpu._exact
    gpu._exact = lambda: torch.backends.cudnn.flags(enabled=True, benchmark=False, deterministic=False,
                                                    allow_tf32=True)
    lt, _ = gpu.predict_batch(imgs, fidx, boxes)
    print(f"fan     with TF32 convolutions instead: {_lm_diff(lc, lt)}; heatmaps {_heat_diff(cpu, gpu, imgs[:1])}")
    t_tf32 = _time(lambda: gpu.predict_batch(imgs, fidx, boxes), torch.cuda.synchronize, 3)
    gpu._exact = exact
    t_g = _time(lambda: gpu.predict_batch(imgs, fidx, boxes), torch.cuda.synchronize, 3)
    t_c = _time(lambda: cpu.predict_batch(imgs, fidx, boxes), None, 1)
    n = len(boxes)
    x = torch.rand(fan.MAX_BATCH, 3, 256, 256, device="cuda:0")
    with torch.no_grad(), gpu._exact():
        t_fwd = _time(lambda: gpu.net(x), torch.cuda.synchronize, 5)
    print(f"fan     forward pass alone on CUDA (fp32, {fan.MAX_BATCH} faces per batch): "
          f"{fan.MAX_BATCH / t_fwd:,.0f} faces/s; the rest of predict_batch is face-alignment's per-face "
          f"crop and heatmap decoding on the CPU and the heatmaps' copy back")
    print(f"fan     faces/s: CUDA fp32 {n / t_g:,.0f}, CUDA TF32 {n / t_tf32:,.0f}, CPU {n / t_c:,.1f} "
          f"({torch.get_num_threads()} torch threads); batch of {fan.MAX_BATCH} faces per forward pass")


def _lm_diff(a, b) -> str:
    d = np.linalg.norm(a[..., :2] - b[..., :2], axis=-1)
    return (f"landmark distance median {np.median(d):.5f} px, {100 * (d < 0.01).mean():.2f} % of points "
            f"within 0.01 px, {100 * (d < 0.05).mean():.2f} % within 0.05 px, max {d.max():.2f} px")


def _heat_diff(cpu, gpu, img) -> str:
    """Largest |difference| of the last hourglass's heatmaps on one face crop, and their range."""
    import torch

    x = torch.from_numpy(np.ascontiguousarray(cv2_resize(img[0], 256).transpose(2, 0, 1))[None].astype(np.float32) / 255)
    with torch.no_grad(), gpu._exact():
        hc = cpu.net(x)[-1].numpy()
        hg = gpu.net(x.to(gpu.device))[-1].float().cpu().numpy()
    return f"max |diff| {np.abs(hc - hg).max():.2e} (values up to {np.abs(hc).max():.2f})"


def cv2_resize(img, side):
    import cv2

    return cv2.resize(img, (side, side), interpolation=cv2.INTER_AREA)


def decode_only(path) -> tuple[int, float]:
    import av

    t0 = time.perf_counter()
    n = 0
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        s.thread_type = "AUTO"
        for f in c.decode(s):
            f.to_ndarray(format="rgb24")
            n += 1
    return n, time.perf_counter() - t0


def make_clip(path: Path, seconds: float, fps: int = 25, phase: int = 0) -> Path:
    """A 1280x720 H.264 clip of the three-face scene (PyAV: no ffmpeg binary needed)."""
    import av

    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=fps)
        s.width, s.height, s.pix_fmt = W, H, "yuv420p"
        s.options = {"crf": "18", "preset": "veryfast"}
        for i in range(int(seconds * fps)):
            for p in s.encode(av.VideoFrame.from_ndarray(_scene(i + 37 * phase), format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


class _StageTimer:
    """Adds up the time each stage spends in on_frames (this process only)."""

    def __init__(self):
        from facekit import stages

        stages.load_builtin()
        self.t: dict[str, float] = {}
        self._orig = {}
        for name, cls in stages.REGISTRY.items():
            if cls.consumes != "frames":
                continue
            self._orig[cls] = cls.on_frames

            def wrapped(obj, batch, row0, writer, _f=cls.on_frames, _n=name):
                t0 = time.perf_counter()
                _f(obj, batch, row0, writer)
                self.t[_n] = self.t.get(_n, 0.0) + time.perf_counter() - t0
            cls.on_frames = wrapped

    def reset(self):
        self.t.clear()


def _read(store_path, key):
    """faces/{crop,landmarks,box} of one video, read from its shard."""
    import h5py

    from facekit import store

    with h5py.File(store.shards_dir(store_path) / store.shard_name(key), "r") as f:
        g = f[store.video_path(key)]
        return {k: g[k][()] for k in ("faces/crop", "faces/landmarks", "faces/box")}


def _opts(landmarker: str, weights_path: str, yunet: str | None) -> dict:
    weights = {"fan2d": weights_path} if landmarker == "fan2d" else {}
    return dict(landmarker=landmarker, weights={**weights, **({"yunet": yunet} if yunet else {})})


def bench_extract(weights_path: str, yunet: str | None, seconds: float, landmarker: str = "fan2d") -> None:
    import facekit

    stages = "detect,track,landmarks,align,crop"
    opts = _opts(landmarker, weights_path, yunet)
    timer = _StageTimer()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        clip = make_clip(tmp / "clip720.mp4", seconds)
        clip2 = make_clip(tmp / "clip720b.mp4", max(2.0, seconds / 4))
        n, dt = decode_only(clip)
        print(f"extract ceiling: PyAV decoding alone {n / dt:.1f} frames/s")
        res = {}
        for dev in ("cuda", "cpu"):  # warm-up on the short clip: model loading, kernel compilation, cuDNN
            facekit.extract([clip2], tmp / f"warm-{dev}.h5", stages=stages, device=dev, progress=False, **opts)
            timer.reset()
            t0 = time.perf_counter()
            s = facekit.extract([clip], tmp / f"{dev}.h5", stages=stages, device=dev, progress=False, **opts)
            dt = time.perf_counter() - t0
            r = s.results[0]
            assert r.status == "done", r
            per = ", ".join(f"{k} {v:.2f} s" for k, v in timer.t.items())
            print(f"extract --device {dev}: {r.n_frames} frames, {r.n_faces} faces in {dt:.2f} s = "
                  f"{r.n_frames / dt:.1f} frames/s ({per}; the rest: decoding in a background thread "
                  f"it waits on, HDF5 writing)")
            res[dev] = _read(tmp / f"{dev}.h5", r.key)
        bc, bg = res["cpu"]["faces/box"], res["cuda"]["faces/box"]
        box_diff = f"max |diff| {np.abs(bc - bg).max():.2e} px" if bc.shape == bg.shape else f"{len(bc)} vs {len(bg)} faces"
        dc = np.abs(res["cpu"]["faces/crop"].astype(int) - res["cuda"]["faces/crop"].astype(int)) \
            if bc.shape == bg.shape else np.zeros(1, int)
        print(f"extract cpu vs cuda stores (landmarker {landmarker}): boxes {box_diff} (YuNet in onnxruntime vs PyTorch); "
              f"{_lm_diff(res['cpu']['faces/landmarks'], res['cuda']['faces/landmarks']) if bc.shape == bg.shape else ''}; "
              f"crops max |diff| {dc.max()} grey levels, identical values {100 * (dc == 0).mean():.4f} %")


def bench_workers(weights_path: str, yunet: str | None, seconds: float, n_clips: int, pers: list[int],
                  landmarker: str = "fan2d") -> None:
    """n_clips clips on one GPU with each --workers-per-device in pers: frames/s and identical stores."""
    import facekit

    stages = "detect,track,landmarks,align,crop"
    opts = _opts(landmarker, weights_path, yunet)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        clips = [make_clip(tmp / f"w{i}.mp4", seconds, phase=i) for i in range(n_clips)]
        outs = {}
        for per in pers:
            t0 = time.perf_counter()
            s = facekit.extract(clips, tmp / f"w{per}.h5", stages=stages, device="cuda",
                                workers_per_device=per, progress=False, **opts)
            dt = time.perf_counter() - t0
            assert s.ok and len(s.processed) == n_clips, s.to_dict()
            n = sum(r.n_frames for r in s.results)
            busy = sum(r.seconds for r in s.results) / min(per, n_clips)  # per-video seconds, spread over the workers
            print(f"workers --device cuda --workers-per-device {per}: {n_clips} videos, {n} frames in {dt:.2f} s "
                  f"= {n / dt:.1f} frames/s (includes starting the workers and loading models); while processing: "
                  f"{n / busy:.1f} frames/s (frames / (sum of per-video seconds / {min(per, n_clips)} workers))")
            outs[per] = {r.key: _read(tmp / f"w{per}.h5", r.key) for r in s.results}
        ref = outs[pers[0]]
        same = all(np.array_equal(ref[k][d], o[k][d]) for o in outs.values() for k in ref for d in ref[k])
        print(f"workers --workers-per-device {', '.join(map(str, pers))}: identical boxes, landmarks and crops: {same}")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--frames", type=int, default=32, help="720p frames in the kernel batch")
    ap.add_argument("--faces", type=int, default=256, help="crops in the kernel batch")
    ap.add_argument("--clip-seconds", type=float, default=10.0, help="length of the generated 720p clip")
    ap.add_argument("--yunet", default=None, help="YuNet .onnx (default: the embedded one)")
    ap.add_argument("--worker-clips", type=int, default=2, help="clips for the workers part")
    ap.add_argument("--per-device", default="1,2", help="--workers-per-device values for the workers part")
    ap.add_argument("--skip", default="", help="comma-separated parts to skip: kernel,fan,extract,workers")
    ap.add_argument("--landmarker", default="fan2d", choices=["fan2d", "dlib68"],
                    help="landmarks of the extract and workers parts: fan2d (GPU, random weights) or dlib68 "
                         "(facekit's numba code on the CPU threads; the issue's detect+landmarks+align+crop stack)")
    a = ap.parse_args(argv)
    skip = set(a.skip.split(","))
    print("device  " + device_line())
    if "kernel" not in skip:
        bench_kernel(a.frames, a.faces)
    if skip >= {"fan", "extract", "workers"}:
        return
    import torch

    with tempfile.TemporaryDirectory() as tmp:
        wp = str(Path(tmp) / "2DFAN4-random.pth")
        torch.save(_randomised_fan().state_dict(), wp)
        if "fan" not in skip:
            bench_fan(wp, a.yunet)
        if "extract" not in skip:
            bench_extract(wp, a.yunet, a.clip_seconds, a.landmarker)
        if "workers" not in skip:
            bench_workers(wp, a.yunet, a.clip_seconds, a.worker_clips, [int(v) for v in a.per_device.split(",")],
                          a.landmarker)


if __name__ == "__main__":
    main()
