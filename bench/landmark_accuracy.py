"""68-point landmark NME on the annotated faces in shared/data, through facekit's detect + landmark
backends (the same code `facekit extract` runs).

    python bench/landmark_accuracy.py [--data ../shared/data] [--scale 1.7 --shift 0.0]

Faces: 300-W (2 images, .pts), 300W-LP (2, 3D-fitted 68 pt) and WFLW (2, 98 pt mapped to 68 with
the standard WFLW->iBUG index map). NME = mean point error / inter-ocular distance (outer eye
corners, points 36 and 45). The detected face with the highest IoU with the ground-truth extent is
used; a face the detector misses counts as a miss, not as an error.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from facekit import zoo  # noqa: E402
from facekit.face import landmarks as lmk  # noqa: E402
from facekit.face.detect import load_detector  # noqa: E402
from facekit.media import _read_image  # noqa: E402

# WFLW 98 -> iBUG 68 (jaw every second point, brow upper edges, nose, eyes without mid points, mouth)
WFLW_TO_68 = (list(range(0, 33, 2)) + [33, 34, 35, 36, 37, 42, 43, 44, 45, 46] + list(range(51, 60))
              + [60, 61, 63, 64, 65, 67, 68, 69, 71, 72, 73, 75] + list(range(76, 96)))


def read_pts(path: Path) -> np.ndarray:
    lines = path.read_text().split("{")[1].split("}")[0].split()
    return np.array(lines, float).reshape(-1, 2)


def load_faces(data: Path) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """[(name, rgb image, landmarks [68,2])]"""
    base = data / "landmarks" / "mmpose"
    faces = []
    for pts in sorted((base / "300w").glob("*.pts")):
        faces.append((f"300w/{pts.stem}", _read_image(str(pts.with_suffix(".png"))), read_pts(pts)))
    for sub, js, mapping in (("300wlp", "test_300wlp.json", None), ("wflw", "test_wflw.json", WFLW_TO_68)):
        d = json.loads((base / sub / js).read_text())
        files = {im["id"]: im["file_name"] for im in d["images"]}
        for a in d["annotations"]:
            k = np.array(a["keypoints"], float).reshape(-1, 3)[:, :2]
            if mapping is not None:
                k = k[mapping]
            faces.append((f"{sub}/{files[a['image_id']]}", _read_image(str(base / sub / files[a["image_id"]])), k))
    return faces


def nme(pred: np.ndarray, gt: np.ndarray) -> float:
    io = np.linalg.norm(gt[36] - gt[45])
    return float(np.linalg.norm(pred - gt, axis=1).mean() / io)


def iou(a, b):
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    u = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - ix * iy
    return ix * iy / u if u > 0 else 0.0


def evaluate(data: Path, scale: float = lmk.BOX_SCALE, shift: float = lmk.BOX_SHIFT, use_kps: bool = True):
    det = load_detector("yunet", score_threshold=0.5)
    lm = lmk.Dlib68(zoo.resolve("dlib68"))
    rows = []
    for name, rgb, gt in load_faces(data):
        boxes, scores, kps = det.detect(rgb)
        ext = (*gt.min(0), *gt.max(0))
        if len(boxes) == 0 or max(iou(b, ext) for b in boxes) < 0.2:
            rows.append((name, None, 0.0))
            continue
        j = int(np.argmax([iou(b, ext) for b in boxes]))
        t0 = time.perf_counter()
        if use_kps:
            box = lmk.box_from_kps5(kps[j:j + 1], scale, shift)
            pred, _ = lm.predict(rgb, box)
        else:
            pred, _ = lm.predict(rgb, boxes[j:j + 1])
        rows.append((name, nme(pred[0], gt), time.perf_counter() - t0))
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=os.environ.get("FACEKIT_TEST_DATA", "../shared/data"))
    ap.add_argument("--scale", type=float, default=lmk.BOX_SCALE)
    ap.add_argument("--shift", type=float, default=lmk.BOX_SHIFT)
    ap.add_argument("--raw-boxes", action="store_true", help="give dlib the detector's boxes as they are")
    args = ap.parse_args()
    rows = evaluate(Path(args.data), args.scale, args.shift, not args.raw_boxes)
    for name, e, t in rows:
        print(f"{name:<58} {'missed' if e is None else f'{100 * e:6.2f} %'}  {1000 * t:5.1f} ms")
    errs = [e for _, e, _ in rows if e is not None]
    print(f"mean NME {100 * np.mean(errs):.2f} % over {len(errs)} faces ({len(rows) - len(errs)} missed)")


if __name__ == "__main__":
    main()
