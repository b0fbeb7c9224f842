"""Detection recall on the 43 hand-labelled PASCAL faces (shared/data/landmarks/dlib_pascal) and false
detections on dogs.jpg, through facekit's own `detect` stage, for several detection sizes and thresholds.

    python bench/detect_accuracy.py [--data ../shared/data]

Prints a table (recall at IoU >= 0.4, false positives on dogs.jpg, ms per image) for docs/models.md.
"""

from __future__ import annotations

import argparse
import os
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

from facekit.config import Config
from facekit.face.detect import DetectStage
from facekit.media import FrameBatch, _read_image


def iou(a, b):
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    u = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / u if u > 0 else 0.0


def load_boxes(d: Path):
    out = {}
    for xml in ("training.xml", "testing.xml"):
        for im in ET.parse(d / xml).getroot().iter("image"):
            boxes = [(int(b.get("left")), int(b.get("top")), int(b.get("left")) + int(b.get("width")),
                      int(b.get("top")) + int(b.get("height"))) for b in im.iter("box")]
            out.setdefault(im.get("file"), []).extend(boxes)
    return out


class _Rec:
    """Minimal writer stand-in collecting what the stage appends."""

    def __init__(self):
        self.data = {}

    def append(self, name, rows):
        self.data.setdefault(name, []).append(np.asarray(rows))

    def get(self, name):
        return np.concatenate(self.data[name]) if name in self.data else np.zeros((0,))


def detect(stage, rgb):
    w = _Rec()
    stage.on_frames(FrameBatch(rgb[None], np.zeros(1), np.zeros(1, np.int64), 1.0), 0, w)
    return w.get("faces/box"), w.get("faces/score")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=os.environ.get("FACEKIT_TEST_DATA", "../shared/data"))
    args = ap.parse_args()
    d = Path(args.data) / "landmarks" / "dlib_pascal"
    gt = load_boxes(d)
    n_gt = sum(len(v) for v in gt.values())
    images = {f: _read_image(str(d / f)) for f in gt}
    dogs = _read_image(str(d / "dogs.jpg"))
    print(f"{n_gt} labelled faces in {len(gt)} images")
    print(f"{'det_size':>8} {'thresh':>6} {'recall':>8} {'FP dogs':>7} {'ms/img':>7}")
    for det_size in (0, 640, 960, 1280):
        for th in (0.6, 0.7, 0.8, 0.9):
            stage = DetectStage(Config(det_size=det_size, det_threshold=th))
            hit, t = 0, 0.0
            for f, boxes in gt.items():
                t0 = time.perf_counter()
                pred, _ = detect(stage, images[f])
                t += time.perf_counter() - t0
                hit += sum(any(iou(g, p) >= 0.4 for p in pred) for g in boxes)
            fp = len(detect(stage, dogs)[0])
            print(f"{det_size:>8} {th:>6.1f} {hit:>4}/{n_gt:<3} {fp:>7} {1000 * t / len(gt):>7.1f}")


if __name__ == "__main__":
    main()
