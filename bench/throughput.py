"""Throughput of `facekit extract` against the ceiling (decode alone) and a naive per-frame loop.

    python bench/throughput.py [CLIP ...] [--stages detect,track,landmarks,align,pose]

For each clip, in one run on the same machine:
  decode  PyAV decoding every frame to RGB (what any pipeline must pay; the ceiling)
  naive   a per-frame loop as a user would write it: cv2.VideoCapture -> YuNet -> dlib 68 points
          (dlib's own box convention: the YuNet box) -> ArcFace 5-point similarity -> warpAffine
  facekit `facekit.extract(..., stages=...)` into a fresh store (includes writing HDF5)
Prints frames/s and the ratios. Default clip: shared/data/videos/hamilton_multiface.mp4.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import facekit  # noqa: E402
from facekit import zoo  # noqa: E402


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


def facekit_run(path: str, stages: str) -> tuple[int, float]:
    with tempfile.TemporaryDirectory() as tmp:
        facekit.extract([path], Path(tmp) / "f.h5", stages=stages, progress=False)  # warm-up: models, JIT
        t0 = time.perf_counter()
        s = facekit.extract([path], Path(tmp) / "g.h5", stages=stages, progress=False)
        dt = time.perf_counter() - t0
    return s.results[0].n_frames, dt


def main():
    ap = argparse.ArgumentParser()
    data = Path(os.environ.get("FACEKIT_TEST_DATA", "../shared/data"))
    ap.add_argument("clips", nargs="*", default=[str(data / "videos" / "hamilton_multiface.mp4")])
    ap.add_argument("--stages", default="detect,track,landmarks,align,pose")
    args = ap.parse_args()
    print(f"stages: {args.stages}; CPU cores: {os.cpu_count()}")
    print(f"{'clip':<28} {'decode fps':>10} {'naive fps':>10} {'facekit fps':>11} {'vs naive':>9} {'of decode':>9}")
    for clip in args.clips:
        nd, td = decode_only(clip)
        nn, tn = naive_loop(clip)
        nf, tf = facekit_run(clip, args.stages)
        fd, fn, ff = nd / td, nn / tn, nf / tf
        print(f"{Path(clip).name:<28} {fd:>10.0f} {fn:>10.1f} {ff:>11.1f} {ff / fn:>8.2f}x {ff / fd:>8.1%}")


if __name__ == "__main__":
    main()
