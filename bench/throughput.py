"""Throughput of `facekit extract` against the ceiling (decode alone), a naive per-frame loop and deface.

    python bench/throughput.py [CLIP ...] [--stages detect,track,landmarks,align,pose] [--every 5]
                               [--repeat 2]

For each clip, in one run on the same machine, back to back:
  decode   PyAV decoding every frame to RGB (what any pipeline must pay; the ceiling)
  naive    a per-frame loop as a user would write it: cv2.VideoCapture -> YuNet -> dlib 68 points
           (dlib's own box convention: the YuNet box) -> ArcFace 5-point similarity -> warpAffine
  facekit  `facekit.extract(..., stages=...)` into a fresh store (includes writing HDF5), detector on
           every frame (--detect-every 1)
  fk-N     the same with --detect-every N (keyframes; faces followed from landmarks in between)
  deface   the `deface` CLI (CenterFace through onnxruntime, `--replacewith none`, which still
           re-encodes the video) on the hamilton clip only, when installed
           (`pip install --no-deps deface==1.5.0`: its other requirements are facekit's own, and
           opencv-python-headless stands in for opencv-python)
Prints frames/s (wall clock) and CPU milliseconds per frame (process + children: less sensitive to
other jobs on a shared machine than the wall clock), and the ratios to the naive loop by both.
The default stages add tracking and head pose to what the naive loop computes;
``--stages detect,track,landmarks,align`` is the like-for-like stack (pose: SQPnP and a
Levenberg-Marquardt refinement, 0.24-0.44 ms a face).
Default clip: shared/data/videos/hamilton_multiface.mp4. ``--repeat 2`` measures everything twice.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import facekit  # noqa: E402
from facekit import zoo  # noqa: E402


def _cpu() -> float:
    """CPU seconds used so far by this process and its finished children."""
    import resource

    a, b = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return a.ru_utime + a.ru_stime + b.ru_utime + b.ru_stime


def decode_only(path: str) -> tuple[int, float]:
    import av

    t0 = time.perf_counter()
    n = 0
    with av.open(path) as c:
        s = c.streams.video[0]
        s.thread_type = "AUTO"
        for f in c.decode(s):
            f.to_ndarray(format="rgb24")
            n += 1
    return n, time.perf_counter() - t0


def naive_loop(path: str) -> tuple[int, float]:
    import cv2
    import dlib

    from facekit.face import align

    det = cv2.FaceDetectorYN.create(str(zoo.resolve("yunet").path), "", (320, 320), 0.8, 0.3, 5000)
    sp = dlib.shape_predictor(str(zoo.resolve("dlib68").path))
    dst = align.ARCFACE_112.astype(np.float32)
    t0 = time.perf_counter()
    cap = cv2.VideoCapture(path)
    n = 0
    while True:
        ok, bgr = cap.read()
        if not ok:
            break
        n += 1
        h, w = bgr.shape[:2]
        det.setInputSize((w, h))
        _, faces = det.detect(bgr)
        rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        for f in faces if faces is not None else []:
            x, y, bw, bh = f[:4]
            shape = sp(rgb, dlib.rectangle(int(x), int(y), int(x + bw), int(y + bh)))
            _ = [(p.x, p.y) for p in shape.parts()]
            m, _ = cv2.estimateAffinePartial2D(f[4:14].reshape(5, 2), dst)
            cv2.warpAffine(rgb, m, (112, 112))
    return n, time.perf_counter() - t0


def facekit_run(path: str, stages: str, every: int = 1) -> tuple[int, float, float]:
    with tempfile.TemporaryDirectory() as tmp:
        facekit.extract([path], Path(tmp) / "f.h5", stages=stages, detect_every=every,
                        progress=False)  # warm-up: models, JIT (not counted)
        t0, c0 = time.perf_counter(), _cpu()
        s = facekit.extract([path], Path(tmp) / "g.h5", stages=stages, detect_every=every, progress=False)
        dt, dc = time.perf_counter() - t0, _cpu() - c0
    return s.results[0].n_frames, dt, dc


def deface_run(path: str) -> tuple[int, float] | None:
    exe = shutil.which("deface") or str(Path(sys.executable).with_name("deface"))
    if not Path(exe).exists():
        return None
    import av

    with av.open(path) as c:
        n = sum(1 for _ in c.demux(c.streams.video[0]) if _.size)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        subprocess.run([exe, path, "-o", str(Path(tmp) / "out.mp4"), "--replacewith", "none",
                        "--backend", "onnxrt"], check=True, capture_output=True)
        return n, time.perf_counter() - t0


def measure(fn, *args):
    """(frames, wall seconds, CPU seconds) of fn(*args), or None."""
    c0 = _cpu()
    r = fn(*args)
    if r is None:
        return None
    return r if len(r) == 3 else (r[0], r[1], _cpu() - c0)


def main():
    ap = argparse.ArgumentParser()
    data = Path(os.environ.get("FACEKIT_TEST_DATA", "../shared/data"))
    ap.add_argument("clips", nargs="*", default=[str(data / "videos" / "hamilton_multiface.mp4")])
    ap.add_argument("--stages", default="detect,track,landmarks,align,pose")
    ap.add_argument("--every", type=int, default=5, help="N of the keyframe run (--detect-every N)")
    ap.add_argument("--repeat", type=int, default=1, help="measure everything this many times")
    args = ap.parse_args()
    print(f"stages: {args.stages}; CPU cores: {os.cpu_count()}; load average {os.getloadavg()[0]:.1f}")
    cols = ["decode", "naive", "facekit", f"fk-{args.every}", "deface"]
    print("| run | clip | " + " | ".join(f"{c} fps (CPU ms/frame)" for c in cols)
          + f" | facekit / naive (wall; CPU) | fk-{args.every} / naive (wall; CPU) |")
    print("|" + "---|" * (len(cols) + 4))
    for rep in range(args.repeat):
        for clip in args.clips:
            r = {"decode": measure(decode_only, clip), "naive": measure(naive_loop, clip),
                 "facekit": measure(facekit_run, clip, args.stages, 1),
                 f"fk-{args.every}": measure(facekit_run, clip, args.stages, args.every),
                 "deface": measure(deface_run, clip) if "hamilton" in Path(clip).name else None}
            fps = {k: (v[0] / v[1] if v else float("nan")) for k, v in r.items()}
            cell = {k: (f"{fps[k]:.1f} ({1000 * v[2] / v[0]:.0f})" if v else "-") for k, v in r.items()}
            cpu = {k: (v[2] / v[0] if v else float("nan")) for k, v in r.items()}  # CPU s a frame

            def ratio(k):
                return f"{fps[k] / fps['naive']:.2f}x; {cpu['naive'] / cpu[k]:.1f}x"

            print(f"| {rep + 1} | {Path(clip).name} | " + " | ".join(cell[c] for c in cols)
                  + f" | {ratio('facekit')} | {ratio(f'fk-{args.every}')} |", flush=True)


if __name__ == "__main__":
    main()
