"""YuNet face detection speed: PyTorch (YuNetTorch, on CUDA or the CPU) against onnxruntime (YuNet, CPU).

    python bench/gpu_detect.py [--device cuda|cuda:N|cpu] [--sizes 720p,1080p] [--batches 1,8,32]
                               [--channels-last auto|yes|no] [--seconds 3] [--json out.json]

Frames: generated RGB frames (the astronaut's face at three places; the speed hardly depends on the
content: only the few candidate cells above the score threshold go back to the host). For each
size and batch size it prints frames/s of

  torch+upload   YuNetTorch.detect_batch(list of B numpy frames): stacking, upload of the uint8
                 frames, forward pass, scores on the device, candidates back, NMS
  torch          the same with the frames already on the device (a uint8 tensor [B, H, W, 3])
  ort            YuNet.detect_batch(the same B frames) in onnxruntime on the CPU (its own chunking)

(from the median call time) and the largest box / key point difference torch vs onnxruntime
on those frames (pixels), the peak GPU memory of the forward pass, the device, threads and
versions. Defaults: batches 1,8,32 on CUDA, 1,4 on the CPU (a 1080p frame takes ~0.5-1 s there).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

SIZES = {"360p": (640, 360), "720p": (1280, 720), "1080p": (1920, 1080)}


def _rate(fn, n_frames: int, seconds: float) -> float:
    """Frames/s of ``fn()`` (which handles n_frames frames) from the median time of a call: one
    warm-up call, then calls until ``seconds`` have passed (at least three); the median, not the
    mean, because the machines we share have bursts of load from other processes."""
    fn()
    times, t0 = [], time.perf_counter()
    while len(times) < 3 or time.perf_counter() - t0 < seconds:
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return n_frames / float(np.median(times))


def _max_diff(a, b) -> float:
    d = 0.0
    for (ba, _, ka), (bb, _, kb) in zip(a, b):
        if len(ba) != len(bb):
            return float("inf")
        if len(ba):
            d = max(d, float(np.abs(ba - bb).max()), float(np.abs(ka - kb).max()))
    return d


def main(argv=None) -> int:
    import onnxruntime as ort
    import torch

    import mediagen
    from facekit import zoo
    from facekit.face.yunet import YuNet, default_threads
    from facekit.face.yunet_torch import YuNetTorch

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--sizes", default="720p,1080p", help=f"comma-separated, of {', '.join(SIZES)}")
    ap.add_argument("--batches", default=None, help="comma-separated batch sizes (default 1,8,32 on CUDA, 1,4 on CPU)")
    ap.add_argument("--seconds", type=float, default=3.0, help="timed seconds per measurement")
    ap.add_argument("--channels-last", choices=("auto", "yes", "no"), default="auto",
                    help="NHWC activations (auto: on the CPU only)")
    ap.add_argument("--no-ort", action="store_true", help="skip onnxruntime")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    a = ap.parse_args(argv)

    w = zoo.resolve("yunet")
    layout = {"auto": None, "yes": True, "no": False}[a.channels_last]
    det = YuNetTorch(w, device=a.device, channels_last=layout)
    ref = None if a.no_ort else YuNet(w)
    cuda = det.device != "cpu"
    batches = [int(b) for b in (a.batches or ("1,8,32" if cuda else "1,4")).split(",")]
    dev = torch.cuda.get_device_name(det.device) if cuda else f"CPU ({platform.processor() or platform.machine()})"
    layout = "channels-last" if det.channels_last else "NCHW"
    print(f"device   torch {det.device} ({layout}): {dev}; PyTorch {torch.__version__} "
          f"({torch.get_num_threads()} threads), "
          f"onnxruntime {ort.__version__} CPU ({default_threads()} threads), {os.cpu_count()} CPU cores, "
          f"load {os.getloadavg()[0]:.1f}")
    rows = []
    print(f"{'size':6} {'batch':>5} {'torch+upload':>13} {'torch':>9} {'ort':>9} {'max diff px':>12} {'GPU MiB':>8}")
    for size in a.sizes.split(","):
        wd, ht = SIZES[size]
        for b in batches:
            frames = [mediagen.face_image((wd, ht), offset=(120 * (k % 3 - 1), 20 * (k % 2))) for k in range(b)]
            on_dev = torch.from_numpy(np.stack(frames)).to(det.device)
            if cuda:
                torch.cuda.reset_peak_memory_stats(det.device)
            got = det.detect_batch(frames)
            peak = torch.cuda.max_memory_allocated(det.device) / 2**20 if cuda else float("nan")
            r = {"size": size, "batch": b, "device": det.device, "channels_last": det.channels_last,
                 "torch_upload_fps": _rate(lambda: det.detect_batch(frames), b, a.seconds),
                 "torch_fps": _rate(lambda: det.detect_batch(on_dev), b, a.seconds),
                 "ort_fps": float("nan"), "max_diff_px": float("nan"), "gpu_peak_mib": peak,
                 "faces": sum(len(x[0]) for x in got)}
            if ref is not None:
                r["max_diff_px"] = _max_diff(got, ref.detect_batch(frames))
                r["ort_fps"] = _rate(lambda: ref.detect_batch(frames), b, a.seconds)
            rows.append(r)
            print(f"{size:6} {b:5d} {r['torch_upload_fps']:13.1f} {r['torch_fps']:9.1f} {r['ort_fps']:9.1f} "
                  f"{r['max_diff_px']:12.2e} {peak:8.0f}", flush=True)
            del on_dev
    print("frames/s; torch+upload: numpy frames in, torch: frames already on the device; ort: onnxruntime CPU")
    if a.json:
        a.json.write_text(json.dumps({"device": dev, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
