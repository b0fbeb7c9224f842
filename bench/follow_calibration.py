"""Fit the constants of facekit.face.follow: how the detector's (YuNet) key points and box sit
relative to the dlib 68 landmarks, on still images that the accuracy benches do NOT use
(shared/data/identity: deepface, face_recognition, facenet, dlib).

    python bench/follow_calibration.py [--data ../shared/data]

For every detected face (inter-ocular distance >= MIN_IOD px), in a face frame (axes: the eye line and
its normal, unit: the inter-ocular distance): the offset of each of the detector's 5 key points from
the matching point of facekit.face.align.kps5_from_lm68 (eye contour centres, nose tip, mouth corners); then, from those 5 points, the
detector box's centre offset and width/height in units of the box_from_kps5 side. Prints the
medians (robust to the odd bad fit) as Python constants, and the residuals.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from facekit import zoo  # noqa: E402
from facekit.face import follow  # noqa: E402
from facekit.face import landmarks as lmk  # noqa: E402
from facekit.face.align import kps5_from_lm68  # noqa: E402
from facekit.face.detect import load_detector  # noqa: E402
from facekit.media import _read_image  # noqa: E402

MIN_IOD = 30.0  # pixels


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=os.environ.get("FACEKIT_TEST_DATA", "../shared/data"))
    data = Path(ap.parse_args().data) / "identity"
    det = load_detector("yunet")
    lm = lmk.Dlib68(zoo.resolve("dlib68"))
    off, boxes = [], []
    files = sorted(p for p in data.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    for p in files:
        rgb = _read_image(str(p))
        b, s, k = det.detect(rgb)
        if not len(b):
            continue
        L, _ = lm.predict(rgb, b, k)
        for j in range(len(b)):
            base = kps5_from_lm68(L[j])
            R, u = follow.face_frame(base)
            if u < MIN_IOD:
                continue
            off.append(((k[j] - base) @ R) / u)  # detector key point - landmark point, face frame
            side = lmk.box_from_kps5(k[j:j + 1])[0]
            a = side[2] - side[0]
            c = (side[:2] + side[2:]) / 2
            boxes.append([((b[j, 0] + b[j, 2]) / 2 - c[0]) / a, ((b[j, 1] + b[j, 3]) / 2 - c[1]) / a,
                          (b[j, 2] - b[j, 0]) / a, (b[j, 3] - b[j, 1]) / a])
    off, boxes = np.array(off), np.array(boxes)
    print(f"{len(off)} faces from {len(files)} images")
    print("KPS5_OFFSET = " + repr(np.round(np.median(off, 0), 4).tolist()))
    print("  (in the face frame; residual after the fit, median |error| per point, inter-ocular units: "
          + str(np.round(np.median(np.linalg.norm(off - np.median(off, 0), axis=2), 0), 3).tolist()) + ")")
    print("BOX_FROM_KPS5 = " + repr(np.round(np.median(boxes, 0), 4).tolist())
          + "  # centre dx, dy, width, height in units of the box_from_kps5 side")
    print("  (median |error|: " + str(np.round(np.median(np.abs(boxes - np.median(boxes, 0)), 0), 4).tolist()) + ")")


if __name__ == "__main__":
    main()
