"""dlib68's image rule (facekit.face.landmarks.Dlib68._crop) against the earlier one, on real faces.

    python bench/dlib_image_rule.py [--data ../shared/data] [CLIP ...]

Earlier rule: every face cropped (box + 30 % margin) and resized so its box is 256 px wide
(INTER_LINEAR up, INTER_AREA down). Current rule: enlarge below 256 px (unchanged), read the frame
itself up to 512 px, 2 x 2 means above. Prints, for the annotated faces of
bench/landmark_accuracy.py with their images scaled by 0.5..4, the NME of both rules and the
distance between them (% of the inter-ocular distance); for each CLIP (every 4th frame, YuNet
faces) the distance between them; and the milliseconds per face of each (one call per face).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import landmark_accuracy as la  # noqa: E402

from facekit import media, zoo  # noqa: E402
from facekit.face import landmarks as lmk  # noqa: E402
from facekit.face.detect import load_detector  # noqa: E402


def crop_earlier(self, rgb, box):
    """The rule before 2026-11-23: crop with margin, resize so the box is WORK_SIDE wide."""
    x0, y0, x1, y1 = box
    h, w = rgb.shape[:2]
    side = max(x1 - x0, 1.0)
    m = lmk.CROP_MARGIN * side
    cx0, cy0 = int(max(0, np.floor(x0 - m))), int(max(0, np.floor(y0 - m)))
    cx1, cy1 = int(min(w, np.ceil(x1 + m))), int(min(h, np.ceil(y1 + m)))
    if cx1 - cx0 < 2 or cy1 - cy0 < 2:
        return None
    k = lmk.WORK_SIDE / side
    crop = cv2.resize(rgb[cy0:cy1, cx0:cx1], (max(1, round((cx1 - cx0) * k)), max(1, round((cy1 - cy0) * k))),
                      interpolation=cv2.INTER_LINEAR if k > 1 else cv2.INTER_AREA)
    kx, ky = crop.shape[1] / (cx1 - cx0), crop.shape[0] / (cy1 - cy0)
    rect = (int(round((x0 - cx0) * kx)), int(round((y0 - cy0) * ky)),
            int(round((x1 - cx0) * kx)), int(round((y1 - cy0) * ky)))
    return crop, rect, (cx0, cy0, kx, ky)


class Both:
    def __init__(self):
        self.lm = lmk.Dlib68(zoo.resolve("dlib68"))
        self.current = lmk.Dlib68._crop
        self.seconds = {"earlier": 0.0, "current": 0.0}

    def __call__(self, rgb, kps):
        out = {}
        for name, crop in (("earlier", crop_earlier), ("current", self.current)):
            lmk.Dlib68._crop = crop
            t0 = time.perf_counter()
            out[name] = self.lm.predict_many([rgb], np.zeros(len(kps), np.int64), lmk.box_from_kps5(kps), kps)
            self.seconds[name] += time.perf_counter() - t0
        lmk.Dlib68._crop = self.current
        return out["earlier"], out["current"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=os.environ.get("FACEKIT_TEST_DATA", "../shared/data"))
    ap.add_argument("clips", nargs="*")
    args = ap.parse_args()
    det = load_detector("yunet", score_threshold=0.5)
    both = Both()
    faces = la.load_faces(Path(args.data))
    print("| image scale | faces | box sides, px | NME, earlier rule | NME, current rule | current vs earlier, mean (max), % IOD |")
    print("|---|---|---|---|---|---|")
    for sc in (0.5, 1, 2, 3, 4):
        old_e, new_e, d, sides = [], [], [], []
        for _, rgb, gt in faces:
            im = rgb if sc == 1 else cv2.resize(rgb, None, fx=sc, fy=sc,
                                                interpolation=cv2.INTER_CUBIC if sc > 1 else cv2.INTER_AREA)
            g = (gt + 0.5) * sc - 0.5
            boxes, _, kps = det.detect(im)
            ext = (*g.min(0), *g.max(0))
            if len(boxes) == 0 or max(la.iou(b, ext) for b in boxes) < 0.2:
                continue
            j = int(np.argmax([la.iou(b, ext) for b in boxes]))
            po, pn = both(im, kps[j:j + 1])
            old_e.append(la.nme(po[0], g))
            new_e.append(la.nme(pn[0], g))
            d.append(la.nme(pn[0], po[0]))
            b = lmk.box_from_kps5(kps[j:j + 1])[0]
            sides.append(b[2] - b[0])
        print(f"| {sc} | {len(d)} | {min(sides):.0f}-{max(sides):.0f} | {100 * np.mean(old_e):.2f} % | "
              f"{100 * np.mean(new_e):.2f} % | {100 * np.mean(d):.2f} ({100 * np.max(d):.2f}) |")
    for clip in args.clips:
        d, sides = [], []
        for b in media.iter_frames(clip, batch_size=16):
            for rgb in b.rgb[::4]:
                _, _, kps = det.detect(rgb)
                if not len(kps):
                    continue
                po, pn = both(rgb, kps)
                for i in range(len(kps)):
                    if np.isfinite(po[i]).all() and np.isfinite(pn[i]).all():
                        d.append(la.nme(pn[i], po[i]))
                        bx = lmk.box_from_kps5(kps[i:i + 1])[0]
                        sides.append(bx[2] - bx[0])
        d, sides = np.array(d), np.array(sides)
        big = d[sides >= lmk.WORK_SIDE]
        print(f"{os.path.basename(clip)}: {len(d)} faces, box sides {sides.min():.0f}-{sides.max():.0f} px: "
              f"current vs earlier {100 * d.mean():.2f} % IOD (p95 {100 * np.percentile(d, 95):.2f}, "
              f"max {100 * d.max():.2f}); boxes >= {lmk.WORK_SIDE:.0f} px: "
              + (f"{100 * big.mean():.2f} % ({len(big)})" if len(big) else "none"))
    print(f"landmark calls above, total: earlier rule {both.seconds['earlier']:.2f} s, current rule {both.seconds['current']:.2f} s")


if __name__ == "__main__":
    main()
