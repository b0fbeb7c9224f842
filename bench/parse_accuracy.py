"""Parsing consistency of the ``landmarks68`` parser on the annotated faces in shared/data.

    python bench/parse_accuracy.py [--data ../shared/data] [--template arcface|ffhq] [--size N]

Faces: those of bench/landmark_accuracy.py (300-W 2, 300W-LP 2, WFLW 4 faces mapped to 68 points).
Each face goes through facekit's own detect -> dlib68 landmarks -> align -> parse code; then every
ground-truth (human-annotated) landmark is mapped into the crop (``faces/affine``) and we check the
label under it against the region it belongs to:

  brows 17-26 -> right_brow/left_brow    eyes 36-47 -> right_eye/left_eye    eye centres -> the eye
  nose 27-35 -> nose                     lips 48-67 -> upper_lip, lower_lip or inner_mouth
  upper lip middle (midpoints 50/61, 51/62, 52/63) -> upper_lip
  lower lip middle (midpoints 58/67, 57/66, 56/65) -> lower_lip               jaw 0-16 -> skin

"strict": the label at the point's pixel; "within 5 %": the label occurs within 0.05 x the
inter-ocular distance (eye centres, ~3 mm) of the point. Contour points (eyes, lips, jaw, the lower
nose) lie ON a region boundary by definition, so about half of them fall outside under any
landmark error: read the strict figures of those rows with that in mind. The same figures are also
given for masks drawn from the ground-truth landmarks themselves (the geometry of the rendering
alone, no landmark error).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from facekit import zoo  # noqa: E402
from facekit.face import align, parse  # noqa: E402
from facekit.face import landmarks as lmk  # noqa: E402
from facekit.face.detect import load_detector  # noqa: E402
from landmark_accuracy import iou, load_faces  # noqa: E402

TOLERANCE_IOD = 0.05  # of the inter-ocular distance (eye centres)
L = parse.L


def point_groups(gt: np.ndarray) -> dict[str, tuple[np.ndarray, list[set[int]]]]:
    """Group name -> (points [P,2], allowed labels per point)."""
    er, el = gt[36:42].mean(0), gt[42:48].mean(0)
    lips = {L["upper_lip"], L["lower_lip"], L["inner_mouth"]}
    g = {
        "brows": (gt[17:27], [{L["right_brow"]}] * 5 + [{L["left_brow"]}] * 5),
        "eyes (contour)": (gt[36:48], [{L["right_eye"]}] * 6 + [{L["left_eye"]}] * 6),
        "eye centres": (np.stack([er, el]), [{L["right_eye"]}, {L["left_eye"]}]),
        "nose": (gt[27:36], [{L["nose"]}] * 9),
        "lips (all 20 points)": (gt[48:68], [lips] * 20),
        "upper lip middle": ((gt[[50, 51, 52]] + gt[[61, 62, 63]]) / 2, [{L["upper_lip"]}] * 3),
        "lower lip middle": ((gt[[58, 57, 56]] + gt[[67, 66, 65]]) / 2, [{L["lower_lip"]}] * 3),
        "jaw (contour)": (gt[0:17], [{L["skin"]}] * 17),
    }
    return g


def hits(mask: np.ndarray, pts: np.ndarray, allowed: list[set[int]], radius: float) -> tuple[np.ndarray, np.ndarray]:
    """(strict, tolerant) booleans per point; points outside the crop count as misses."""
    S = mask.shape[0]
    strict = np.zeros(len(pts), bool)
    tol = np.zeros(len(pts), bool)
    r = int(np.ceil(radius))
    dy, dx = np.mgrid[-r:r + 1, -r:r + 1]
    disc = dx ** 2 + dy ** 2 <= radius ** 2
    for i, (p, ok) in enumerate(zip(pts, allowed)):
        x, y = int(round(p[0])), int(round(p[1]))
        if 0 <= x < S and 0 <= y < S:
            strict[i] = int(mask[y, x]) in ok
        ys, xs = (y + dy)[disc], (x + dx)[disc]
        inside = (xs >= 0) & (xs < S) & (ys >= 0) & (ys < S)
        tol[i] = bool(np.isin(mask[ys[inside], xs[inside]], list(ok)).any())
    return strict, tol


def evaluate(data: Path, template: str = "arcface", size: int | None = None):
    """[(face name, {group: (strict [P], tolerant [P])} from dlib68 masks, same from GT masks)]."""
    det = load_detector("yunet", score_threshold=0.5)
    lm = lmk.Dlib68(zoo.resolve("dlib68"))
    size = int(size or align.DEFAULT_SIZE[template])
    rows = []
    for name, rgb, gt in load_faces(data):
        boxes, scores, kps = det.detect(rgb)
        ext = (*gt.min(0), *gt.max(0))
        if len(boxes) == 0 or max(iou(b, ext) for b in boxes) < 0.2:
            rows.append((name, None, None))
            continue
        j = int(np.argmax([iou(b, ext) for b in boxes]))
        pred, _ = lm.predict(rgb, boxes[j:j + 1], kps[j:j + 1])
        # the align stage's own affine (image -> crop)
        if template == "ffhq":
            m = align.ffhq_quad_affine(pred[:, :, :2].astype(np.float64), size)
        else:
            m = align.similarity_from_points(kps[j:j + 1].astype(np.float64), align.template("arcface", size))
        m = align.invert_affine(align.invert_affine(m).astype(np.float32).astype(np.float64))  # stored float32
        lm_crop = align.transform_points(m, pred[:, :, :2].astype(np.float64))
        gt_crop = align.transform_points(m, gt[None].astype(np.float64))[0]
        mask = parse.render_landmarks68(lm_crop, size)[0]
        mask_gt = parse.render_landmarks68(gt_crop[None], size)[0]
        radius = TOLERANCE_IOD * float(np.linalg.norm(gt_crop[36:42].mean(0) - gt_crop[42:48].mean(0)))
        res, res_gt = {}, {}
        for g, (pts, allowed) in point_groups(gt_crop).items():
            res[g] = hits(mask, pts, allowed, radius)
            res_gt[g] = hits(mask_gt, pts, allowed, radius)
        rows.append((name, res, res_gt))
    return rows


def summary(rows) -> dict[str, dict[str, float]]:
    """group -> {strict, tolerant, strict_gt, tolerant_gt, n} in % over all faces."""
    out = {}
    found = [r for r in rows if r[1] is not None]
    for g in found[0][1]:
        s = np.concatenate([r[1][g][0] for r in found])
        t = np.concatenate([r[1][g][1] for r in found])
        sg = np.concatenate([r[2][g][0] for r in found])
        tg = np.concatenate([r[2][g][1] for r in found])
        out[g] = {"strict": 100 * s.mean(), "tolerant": 100 * t.mean(), "strict_gt": 100 * sg.mean(),
                  "tolerant_gt": 100 * tg.mean(), "n": int(s.size)}
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=os.environ.get("FACEKIT_TEST_DATA", "../shared/data"))
    ap.add_argument("--template", choices=align.TEMPLATES, default="arcface")
    ap.add_argument("--size", type=int, default=None)
    args = ap.parse_args()
    rows = evaluate(Path(args.data), args.template, args.size)
    missed = [r[0] for r in rows if r[1] is None]
    print(f"{len(rows) - len(missed)} faces ({len(missed)} missed: {', '.join(missed) or '-'}), "
          f"template {args.template} {args.size or align.DEFAULT_SIZE[args.template]} px")
    print(f"{'points':<22} {'n':>4}  {'strict':>7} {'within 5%':>9}   {'GT-drawn: strict':>16} {'within 5%':>9}")
    for g, v in summary(rows).items():
        print(f"{g:<22} {v['n']:>4}  {v['strict']:6.1f}% {v['tolerant']:8.1f}%   {v['strict_gt']:15.1f}% "
              f"{v['tolerant_gt']:8.1f}%")


if __name__ == "__main__":
    main()
