"""Milliseconds per face of dlib's 68-point shape predictor: dlib.shape_predictor vs facekit.face.ert.

    python bench/ert_speed.py [--video ../shared/data/videos/hamilton_multiface.mp4] [--every 3]
                              [--batches 1,4,32] [--repeat 5] [--mode crop|frame]

Faces: YuNet (one onnxruntime thread) on every ``--every``-th frame of the video, the predictor's
box from the five key points (facekit.face.landmarks.box_from_kps5). ``--mode crop`` (default) runs
both on the crops Dlib68 builds (the box resized to WORK_SIDE pixels, CROP_MARGIN around it);
``--mode frame`` on the whole frame with the rounded box. Then, on one thread (NUMBA_NUM_THREADS=1),
batches of 1, 4, 32 faces: dlib one call per face, ert one ``predict`` per batch; the table gives the
best and median of ``--repeat`` passes over all faces, wall and CPU milliseconds per face (the machine
may be shared: CPU time is the steadier figure), and how many faces have all 68 points identical.
"""

from __future__ import annotations

import os

os.environ.setdefault("NUMBA_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from facekit import zoo  # noqa: E402
from facekit.face import ert  # noqa: E402
from facekit.face.landmarks import CROP_MARGIN, WORK_SIDE, box_from_kps5  # noqa: E402

DEFAULT_VIDEO = Path(__file__).resolve().parents[2] / "shared/data/videos/hamilton_multiface.mp4"


def faces_of(video: str, every: int, mode: str):
    """(images list of RGB uint8, rects int [n,4] dlib ltrb, image index [n])."""
    import av
    import cv2

    from facekit.face.yunet import YuNet

    det = YuNet(zoo.resolve("yunet"), threads=1)
    images, rects, index = [], [], []
    with av.open(video) as c:
        for i, fr in enumerate(c.decode(video=0)):
            if i % every:
                continue
            rgb = fr.to_ndarray(format="rgb24")
            boxes, _, kps = det.detect(rgb)
            if not len(boxes):
                continue
            h, w = rgb.shape[:2]
            for x0, y0, x1, y1 in box_from_kps5(kps):
                if mode == "frame":
                    if len(images) == 0 or images[-1] is not rgb:
                        images.append(rgb)
                    rects.append((round(x0), round(y0), round(x1), round(y1)))
                    index.append(len(images) - 1)
                    continue
                # Dlib68's crop: the box resized to WORK_SIDE pixels with CROP_MARGIN around it
                side = max(x1 - x0, 1.0)
                m = CROP_MARGIN * side
                cx0, cy0 = int(max(0, np.floor(x0 - m))), int(max(0, np.floor(y0 - m)))
                cx1, cy1 = int(min(w, np.ceil(x1 + m))), int(min(h, np.ceil(y1 + m)))
                if cx1 - cx0 < 2 or cy1 - cy0 < 2:
                    continue
                k = WORK_SIDE / side
                crop = cv2.resize(rgb[cy0:cy1, cx0:cx1], (max(1, round((cx1 - cx0) * k)),
                                                         max(1, round((cy1 - cy0) * k))),
                                  interpolation=cv2.INTER_LINEAR if k > 1 else cv2.INTER_AREA)
                kx, ky = crop.shape[1] / (cx1 - cx0), crop.shape[0] / (cy1 - cy0)
                images.append(np.ascontiguousarray(crop))
                rects.append((round((x0 - cx0) * kx), round((y0 - cy0) * ky), round((x1 - cx0) * kx),
                              round((y1 - cy0) * ky)))
                index.append(len(images) - 1)
    return images, np.array(rects, np.int64).reshape(-1, 4), np.array(index, np.int64)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--video", default=str(DEFAULT_VIDEO))
    ap.add_argument("--every", type=int, default=3, help="detect on every N-th frame")
    ap.add_argument("--batches", default="1,4,32")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--mode", choices=("crop", "frame"), default="crop")
    a = ap.parse_args()
    import dlib

    weights = zoo.resolve("dlib68")
    t0, c0 = time.perf_counter(), time.process_time()
    model = ert.ErtModel.load(weights.path)
    print(f"ert parse: {time.perf_counter() - t0:.2f} s wall, {time.process_time() - c0:.2f} s CPU")
    t0, c0 = time.perf_counter(), time.process_time()
    sp = dlib.shape_predictor(str(weights.path))
    print(f"dlib load: {time.perf_counter() - t0:.2f} s wall, {time.process_time() - c0:.2f} s CPU")
    images, rects, index = faces_of(a.video, a.every, a.mode)
    n = len(rects)
    print(f"{n} faces ({a.mode}) from {Path(a.video).name}, every {a.every}th frame")
    model.predict(images, rects[:1], index[:1])  # compile / load the numba cache

    def run_dlib(lo, hi):
        return [sp(images[index[i]], dlib.rectangle(*map(int, rects[i]))) for i in range(lo, hi)]

    def run_ert(lo, hi):
        return model.predict(images, rects[lo:hi], index[lo:hi])

    ref = np.array([[(p.x, p.y) for p in s.parts()] for s in run_dlib(0, n)])
    ours = ert.round_like_dlib(run_ert(0, n))
    same = (ours == ref).all(axis=(1, 2))
    print(f"identical faces: {same.sum()} / {n}; largest difference {np.abs(ours - ref).max()} px")
    print(f"{'batch':>5} {'impl':>5} {'wall best':>10} {'wall med':>9} {'cpu best':>9} {'cpu med':>8}  ms/face")
    for bs in (int(b) for b in a.batches.split(",")):
        stats = {"dlib": [], "ert": []}
        for _ in range(a.repeat):
            for name, fn in (("dlib", run_dlib), ("ert", run_ert)):  # interleaved: same load for both
                t0, c0 = time.perf_counter(), time.process_time()
                for lo in range(0, n - bs + 1, bs):
                    fn(lo, lo + bs)
                done = (n // bs) * bs
                stats[name].append(((time.perf_counter() - t0) / done * 1e3, (time.process_time() - c0) / done * 1e3))
        for name, s in stats.items():
            w, c = np.array(s).T
            print(f"{bs:>5} {name:>5} {w.min():>10.3f} {np.median(w):>9.3f} {c.min():>9.3f} {np.median(c):>8.3f}")


if __name__ == "__main__":
    main()
