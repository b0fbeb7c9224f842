"""Keyframe detection: run the detector every N frames and follow faces in between from their landmarks.

``--detect-every N`` (default 1: detect on every frame). Frame ``r`` (a row of ``frames/``, so N
counts sampled frames under ``--fps``) is a **keyframe**, where the detector runs on the whole
frame, when any of these holds:

- ``r % N == 0``;
- a scene cut starts at it (the ``track`` stage's ``CutDetector``, same threshold);
- it is more than ``MAX_GAP_SEC`` after the previous frame (sparse ``--fps`` sampling: faces move
  too far between frames to be followed);
- a face followed onto it looks lost or wrong (below); the detector's faces then replace every
  followed face of that frame.

On the other frames every face of the previous frame is **followed**: its five key points are
predicted from the previous frame's 68 landmarks (``kps5_from_landmarks``: the landmark points the
detector's key points correspond to, plus the offsets ``KPS5_OFFSET`` fitted by
``bench/follow_calibration.py``; moved on by ``VELOCITY_GAIN`` x the last frame-to-frame motion), and
the landmarker runs on the box those predicted points give (``landmarks.box_from_kps5``, the same
rule as after a detection). The face's stored ``kps5`` and ``box`` are derived from its new
landmarks: the key points of ``kps5_from_landmarks`` and the box of ``BOX_FROM_KPS5``, each corrected
by this face's own offsets between the detector's output and the landmark-derived values, measured
at its last detection (IoU of followed boxes with per-frame detection ~0.97 on GRID/VideoReTalking);
its ``score`` is the score of the detection it was followed from; ``faces/source`` is 1 (0 for
detected faces). Its landmarks cannot be recomputed from the stored key points (they were computed
from the predicted ones), so the ``landmarks`` stage takes them from the ``detect`` stage, and the
engine reuses a stored keyframe ``detect`` only together with its ``landmarks``.

A followed face is **lost or wrong** (the frame becomes a keyframe) when: its landmarks fall more
than ``OUTSIDE_FRAC`` outside the image (a face leaving the frame); its inter-ocular distance
changed by more than a factor ``SCALE_JUMP`` or is below ``MIN_IOD_PX`` pixels; the key points of
its new landmarks are more than ``MOVE_JUMP`` inter-ocular distances from the predicted ones (it
moved faster than predicted: the landmarker started from a wrong box); its shape, aligned on the
previous frame's by a similarity, differs from it by more than ``SHAPE_JUMP`` (mean point distance,
inter-ocular units: the landmarker slipped); or two followed faces overlap (IoU > ``DUP_IOU``).
A face that appears between keyframes is found at the next keyframe (at most N-1 frames late); a
face that disappears without triggering these checks is dropped at the next keyframe.
"""

from __future__ import annotations

import numpy as np

from .align import kps5_from_lm68
from .landmarks import box_from_kps5

DEFAULT_DETECT_EVERY = 1  # frames; 1 = the detector runs on every frame
# detector key point - landmark key point (eye contour centres, nose tip 30, mouth corners 48/54), in a
# face frame (x along the eye line from the image-left eye, y perpendicular, pointing down; unit: the
# inter-ocular distance). Fitted by bench/follow_calibration.py on shared/data/identity (YuNet, dlib68; 82 faces, medians).
KPS5_OFFSET = ((-0.018, -0.0113), (0.0138, -0.017), (0.0041, 0.0399), (0.014, -0.0068), (-0.0103, -0.0132))
# the detector's box from its 5 key points: centre offset (dx, dy) and (width, height), in units of the
# box_from_kps5 side (same fit)
BOX_FROM_KPS5 = (-0.0089, -0.074, 0.8768, 1.2259)
VELOCITY_GAIN = 1.0    # predicted key points = last + gain * (last - the one before)
MAX_GAP_SEC = 0.25     # a frame farther than this from the previous one is a keyframe
MIN_IOD_PX = 8.0       # faces smaller than this (inter-ocular, processed pixels) are not followed
OUTSIDE_FRAC = 0.25    # fraction of landmarks outside the image above which a face is lost
SCALE_JUMP = 1.25      # max factor of inter-ocular distance change between consecutive frames
MOVE_JUMP = 0.25       # inter-ocular distances between predicted and new key points (mean of 5)
SHAPE_JUMP = 0.12      # mean landmark change after similarity alignment, inter-ocular units
DUP_IOU = 0.5          # two followed faces overlapping more than this: one slipped onto the other
PATCH_SIDE = 32        # pixels: side of the aligned grey face patch compared with the last detection's
MIN_NCC = 0.6          # normalised cross-correlation below which the followed patch is no longer that face


def face_frame(kps5: np.ndarray) -> tuple[np.ndarray, float]:
    """Face axes of five key points [5,2]: rotation R [2,2] (columns: eye-line direction, its normal)
    and unit u (inter-ocular distance, pixels). Face-frame offsets d map to pixels as ``u * d @ R.T``."""
    e = np.asarray(kps5[1], np.float64) - np.asarray(kps5[0], np.float64)
    u = float(np.hypot(*e))
    x = e / max(u, 1e-9)
    return np.array([[x[0], -x[1]], [x[1], x[0]]]), u


def kps5_from_landmarks(lm68: np.ndarray) -> np.ndarray:
    """Detector-convention key points [n,5,2] float64 from 68 landmarks [n,68,2] (pixels)."""
    base = kps5_from_lm68(np.asarray(lm68, np.float64).reshape(-1, 68, 2))
    off = np.asarray(KPS5_OFFSET, np.float64)
    out = np.empty_like(base)
    for i, b in enumerate(base):
        R, u = face_frame(b)
        out[i] = b + u * off @ R.T
    return out


def box_from_points(kps5: np.ndarray) -> np.ndarray:
    """Detector-like boxes [n,4] xyxy (pixels) from key points [n,5,2] (``BOX_FROM_KPS5``)."""
    sq = box_from_kps5(kps5)
    side = sq[:, 2] - sq[:, 0]
    cx, cy = (sq[:, 0] + sq[:, 2]) / 2, (sq[:, 1] + sq[:, 3]) / 2
    dx, dy, w, h = BOX_FROM_KPS5
    cx, cy = cx + dx * side, cy + dy * side
    return np.stack([cx - w * side / 2, cy - h * side / 2, cx + w * side / 2, cy + h * side / 2], axis=1)


def _iod(kps5: np.ndarray) -> np.ndarray:
    return np.linalg.norm(kps5[:, 1] - kps5[:, 0], axis=-1)


def shape_change(a: np.ndarray, b: np.ndarray) -> float:
    """Mean distance between landmarks a and b [68,2] after the least-squares similarity that maps b
    onto a, in units of a's inter-ocular distance (outer eye corners 36, 45)."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    ca, cb = a.mean(0), b.mean(0)
    A, B = a - ca, b - cb
    za, zb = A[:, 0] + 1j * A[:, 1], B[:, 0] + 1j * B[:, 1]
    s = np.vdot(zb, za) / max(np.vdot(zb, zb).real, 1e-12)  # complex scale-rotation b -> a
    r = za - s * zb
    io = float(np.linalg.norm(a[36] - a[45]))
    return float(np.abs(r).mean() / max(io, 1e-9))


def face_patch(rgb: np.ndarray, kps5: np.ndarray) -> np.ndarray:
    """Grey face patch [PATCH_SIDE, PATCH_SIDE] float32, aligned on the ArcFace template by the key
    points [5,2], normalised to zero mean and unit norm (so a dot product is the NCC)."""
    import cv2

    from .align import similarity_from_points, template

    m = similarity_from_points(np.asarray(kps5, np.float64), template("arcface", PATCH_SIDE))
    if not np.isfinite(m).all():
        return np.zeros((PATCH_SIDE, PATCH_SIDE), np.float32)
    p = cv2.warpAffine(rgb, m, (PATCH_SIDE, PATCH_SIDE), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    g = cv2.cvtColor(p, cv2.COLOR_RGB2GRAY).astype(np.float32)
    g -= g.mean()
    return g / max(float(np.linalg.norm(g)), 1e-6)


def _box_iou(a: np.ndarray, b: np.ndarray) -> float:
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    inter = max(w, 0.0) * max(h, 0.0)
    u = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / u if u > 0 else 0.0


class Follower:
    """Per-video state of keyframe detection (see the module docstring). Pixels are those of the
    images fed to ``step`` (processed frames).

    detect(rgb) -> (boxes [n,4], scores [n], kps5 [n,5,2]); landmark(rgb, kps5 [n,5,2]) -> [n,68,2]
    (the landmarker run on ``box_from_kps5(kps5)``); cuts(rgb) -> bool (a scene-cut detector);
    roundtrip(points) -> points as stored and read back (display float32 and back), so that what is
    stored reproduces exactly what was computed. ``every``: N.
    """

    def __init__(self, detect, landmark, every: int, cuts, roundtrip=lambda p: p):
        self.detect, self.landmark, self.every, self.cuts = detect, landmark, int(every), cuts
        self.roundtrip = roundtrip
        self.row = -1
        self.t = None
        self.faces = None  # the previous frame's faces: dict of arrays (processed pixels)
        self.n_detected = self.n_followed = 0  # frames, for logging
        self.reasons: dict[str, int] = {}      # why frames outside the N grid became keyframes
        self.ncc: list[float] = []             # appearance scores of the followed faces (for tuning)

    def _why(self, reason: str) -> None:
        self.reasons[reason] = self.reasons.get(reason, 0) + 1

    def step(self, rgb: np.ndarray, t: float, cut: bool | None = None, detected=None) -> dict:
        """Faces of the next frame: dict box [n,4], score [n], kps5 [n,5,2], landmarks [n,68,2]
        (float64, processed pixels) and source [n] uint8 (0 detected, 1 followed).

        ``cut``: whether a scene cut starts at this frame, when already known (else ``cuts(rgb)``
        is called); ``detected``: ``detect(rgb)``'s result, when already computed (used if the frame
        is a keyframe)."""
        self.row += 1
        cut = bool(self.cuts(rgb)) if cut is None else bool(cut)
        key = self.row % self.every == 0 or self.faces is None
        if not key and cut:
            key = True
            self._why("cut")
        if not key and self.t is not None and t - self.t > MAX_GAP_SEC:
            key = True
            self._why("gap")
        out = None
        if not key:
            out = self._follow(rgb)
            if out is None:
                key = True
        if key:
            out = self._detect(rgb, detected)
        self.t = float(t)
        self.faces = out
        if key:
            self.n_detected += 1
        else:
            self.n_followed += 1
        return {k: v for k, v in out.items() if not k.startswith("_")}

    def _detect(self, rgb, detected=None) -> dict:
        boxes, scores, kps = self.detect(rgb) if detected is None else detected
        kps = self.roundtrip(np.asarray(kps, np.float64).reshape(-1, 5, 2))
        lm = np.asarray(self.landmark(rgb, kps), np.float64).reshape(-1, 68, 2)
        n = len(kps)
        prev = np.full((n, 5, 2), np.nan)
        if self.faces is not None and len(self.faces["box"]) and n:  # motion: match the previous frame's faces
            for j in range(n):
                ious = [_box_iou(boxes[j], b) for b in self.faces["box"]]
                i = int(np.argmax(ious))
                if ious[i] >= 0.3:
                    prev[j] = self.faces["_pts"][i]
        boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
        pts = kps5_from_landmarks(lm)
        # this face's own offsets (detector - landmark-derived), kept while it is followed
        dk, db = np.zeros((n, 5, 2)), np.zeros((n, 4))
        for j in range(n):
            R, u = face_frame(pts[j])
            dk[j] = (kps[j] - pts[j]) @ R / max(u, 1e-9)
            db[j] = (boxes[j] - box_from_points(pts[j:j + 1])[0]) / max(u, 1e-9)
        return {"box": boxes, "score": np.asarray(scores, np.float64),
                "kps5": kps, "landmarks": lm, "source": np.zeros(n, np.uint8),
                "_pts": pts, "_prev_pts": prev, "_dk": dk, "_db": db,
                "_patch": [face_patch(rgb, k) for k in kps]}

    def _follow(self, rgb) -> dict | None:
        f = self.faces
        n = len(f["box"])
        if n == 0:
            return {**f, "source": np.ones(0, np.uint8), "_prev_pts": np.zeros((0, 5, 2))}
        h, w = rgb.shape[:2]
        pts = f["_pts"]
        vel = np.where(np.isnan(f["_prev_pts"]), 0.0, pts - f["_prev_pts"])
        pred = self.roundtrip(pts + VELOCITY_GAIN * vel)
        if (_iod(pred) < MIN_IOD_PX).any():
            self._why("small")
            return None
        lm = np.asarray(self.landmark(rgb, pred), np.float64).reshape(-1, 68, 2)
        if not np.isfinite(lm).all():
            self._why("lost")
            return None
        new_pts = kps5_from_landmarks(lm)
        for j in range(n):
            inside = (lm[j, :, 0] >= 0) & (lm[j, :, 0] <= w - 1) & (lm[j, :, 1] >= 0) & (lm[j, :, 1] <= h - 1)
            if 1.0 - inside.mean() > OUTSIDE_FRAC:
                self._why("outside")
                return None
            io_old, io_new = _iod(pts[j:j + 1])[0], _iod(new_pts[j:j + 1])[0]
            if not (1 / SCALE_JUMP <= io_new / max(io_old, 1e-9) <= SCALE_JUMP):
                self._why("scale")
                return None
            if np.linalg.norm(new_pts[j] - pred[j], axis=1).mean() > MOVE_JUMP * io_old:
                self._why("moved")
                return None
            if shape_change(lm[j], f["landmarks"][j]) > SHAPE_JUMP:
                self._why("shape")
                return None
        boxes = box_from_points(new_pts)
        adj = new_pts.copy()
        for j in range(n):  # the face's own detector offsets, measured at its last detection
            R, u = face_frame(new_pts[j])
            adj[j] = new_pts[j] + u * f["_dk"][j] @ R.T
            boxes[j] += u * f["_db"][j]
        for j in range(n):  # the appearance: still the face that was detected?
            ncc = float(np.sum(face_patch(rgb, adj[j]) * f["_patch"][j]))
            self.ncc.append(ncc)
            if ncc < MIN_NCC:
                self._why("appearance")
                return None
        for a in range(n):
            for b in range(a + 1, n):
                if _box_iou(boxes[a], boxes[b]) > DUP_IOU:
                    self._why("overlap")
                    return None
        return {"box": boxes, "score": f["score"].copy(), "kps5": self.roundtrip(adj), "landmarks": lm,
                "source": np.ones(n, np.uint8), "_pts": new_pts, "_prev_pts": pts, "_dk": f["_dk"], "_db": f["_db"], "_patch": f["_patch"]}
