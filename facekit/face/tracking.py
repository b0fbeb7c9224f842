"""Face tracking: per-frame detections -> stable track ids, track summaries, primary face, scene cuts.

Pure NumPy/SciPy (``CutDetector`` alone uses OpenCV for its downscale and histogram). Built for the
streaming pipeline: the tracker is fed one frame at a time and keeps O(1) state per track (last box,
velocity, running embedding, summary sums), never the frames or the past detections.

Association (``Tracker.update``)
    Each live track predicts its box at the new frame time with a constant-velocity model of its
    centre (size is carried over). Cost of track i <-> detection j is ``1 - IoU(pred_i, det_j)``
    (plus ``emb_weight * (1 - cos)`` when embeddings are given); pairs with IoU below
    ``iou_threshold`` or cosine below ``emb_threshold`` are forbidden. The assignment is solved
    globally per frame (Hungarian, ``scipy.optimize.linear_sum_assignment``). A track that missed
    frames may also match on IoU with its last seen box (a face that stopped behind an occluder).
    Tracks survive misses up to ``max_gap_sec``; a frame flagged ``cut=True`` ends every live track
    first, so no track spans a scene cut. Unmatched detections start new tracks; ids are 0, 1, 2, ...
    in order of first appearance (ties within a frame: detection order). Fully deterministic.

Track summary (``Tracker.summary``) and the primary face
    Per track: ``id``, ``first_frame``/``last_frame`` (row indices in the order frames were fed),
    ``first_t``/``last_t`` (s), ``n_frames`` (frames with a detection), ``mean_size`` (mean
    sqrt(box area), pixels), ``mean_center_dist`` (mean distance of the box centre to the image
    centre divided by the half diagonal: 0 = centre, 1 = corner; NaN without an image size),
    ``mean_score``, ``shot`` (number of cuts fed before the track began), ``score`` and ``primary``.

    PRIMARY_RULE: score = n_frames * mean_size * (1 - 0.5 * mean_center_dist); the primary track is
    the argmax (ties: lowest id). Without an image size the centrality factor is 1. Tracks shorter
    than ``min_track_len`` frames score 0 and are never selected. ``select`` keeps the detections of
    the K best-scoring tracks (``--max-faces K``) or of the primary only (``--primary``).

Re-joining (``rejoin_tracks``)
    Offline, after an embedding stage: tracks that never share a frame and whose mean embeddings
    have cosine > threshold are merged, greedily, most similar pair first.

Scene cuts (``CutDetector``)
    Hellinger (OpenCV "Bhattacharyya") distance between the hue-saturation histograms of two
    consecutive downscaled frames. Measured on the shared clips: hard cuts 0.39-0.49 (hamilton),
    within-shot frames <= 0.13 (hamilton: camera motion, a head leaving the frame, gestures; GRID,
    VideoReTalking, crowd: <= 0.06). Default threshold 0.25 sits between the two. Hue/saturation
    ignore brightness, so gradual lighting changes do not fire. Entering and leaving a black frame
    (fade to / from black) also fire. About 0.2 ms per frame of any size (0.5 ms measured on a
    loaded 2-core machine), most of it one bilinear downscale to 128 px wide.
    Known limit of any histogram method: a cut between two shots with the same colours (shot /
    reverse shot in one room) can go unseen; the tracker then relies on IoU and embeddings.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.sparse import csr_matrix

# --- tracker defaults -------------------------------------------------------------------------
IOU_THRESHOLD = 0.3     # min IoU(predicted track box, detection) to associate (SORT's usual value)
MAX_GAP_SEC = 1.0       # seconds a track survives without detections (misses, short occlusions)
GAP_TOLERANCE_SEC = 1e-6  # timestamps are sums of float steps: 2.033 - 1.033 may exceed 1.0
MIN_TRACK_LEN = 1       # frames; shorter tracks are left out of select() and the primary choice
EMB_THRESHOLD = 0.2     # min cosine(track embedding, detection embedding) to associate (a veto only:
                        # different people score ~0, the same person across poses ~0.3-0.9)
EMB_WEIGHT = 1.0        # weight of (1 - cosine) next to (1 - IoU) in the assignment cost
EMB_MOMENTUM = 0.9      # track embedding = normalise(m * track + (1 - m) * detection)
VEL_SMOOTH = 0.5        # velocity = a * observed + (1 - a) * previous (pixels/s, exponential smoothing)
REJOIN_MODEL = "sface"  # identity embeddings of the track stage's --track-rejoin
REJOIN_THRESHOLD = 0.5  # min cosine of mean embeddings to merge two tracks (strict: a wrong merge
                        # mixes two identities, a missed one only leaves an extra id)
PRIMARY_RULE = ("score = n_frames * mean_size * (1 - 0.5 * mean_center_dist); primary = argmax "
                "(mean_size: mean sqrt(box area) in pixels; mean_center_dist: box centre to image "
                "centre / half diagonal, 0..1)")

# --- cut detector defaults --------------------------------------------------------------------
CUT_THRESHOLD = 0.25    # Hellinger distance of consecutive H-S histograms (0 = same, 1 = disjoint)
CUT_WIDTH = 128         # pixels; frames are downscaled to this width before the histogram
CUT_BINS = (16, 4)      # hue x saturation bins
BLACK_LUMA = 32         # 0..255; a frame is black when fewer than BLACK_FRAC of its pixels exceed it
BLACK_FRAC = 0.02


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of boxes a [n,4] and b [m,4] (xyxy) -> [n,m]."""
    a = np.asarray(a, np.float64).reshape(-1, 4)
    b = np.asarray(b, np.float64).reshape(-1, 4)
    w = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0])
    h = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1])
    inter = np.maximum(w, 0) * np.maximum(h, 0)
    area_a = np.maximum(a[:, 2] - a[:, 0], 0) * np.maximum(a[:, 3] - a[:, 1], 0)
    area_b = np.maximum(b[:, 2] - b[:, 0], 0) * np.maximum(b[:, 3] - b[:, 1], 0)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def _normalise(x: np.ndarray) -> np.ndarray:
    """Rows of x [n,D] scaled to unit length (zero rows stay zero)."""
    x = np.asarray(x, np.float64)
    n = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(n, 1e-12)


class _Track:
    """State of one track: motion model, running embedding, and the sums its summary needs."""

    def __init__(self, tid: int, t: float, row: int, shot: int):
        self.id, self.shot = tid, shot
        self.box = np.zeros(4)                 # last seen box, xyxy pixels
        self.vel = np.zeros(2)                 # centre velocity, pixels/s
        self.has_vel = False
        self.t = t                             # time of the last detection, s
        self.row = row                         # frame row of the last detection
        self.emb = None                        # running unit embedding [D]
        self.first_frame, self.first_t = row, t
        self.n = 0
        self.sum_size = self.sum_dist = self.sum_score = 0.0

    def predict(self, t: float) -> np.ndarray:
        """Box expected at time t [4]: centre moved at constant velocity, size kept."""
        if not self.has_vel:
            return self.box
        shift = self.vel * max(t - self.t, 0.0)
        return self.box + np.concatenate([shift, shift])

    def add(self, box, t, row, score, emb, center_dist):
        """Record detection ``box`` [4] at time t (frame ``row``)."""
        dt = t - self.t
        if self.n > 0 and dt > 0:
            v = (_centre(box) - _centre(self.box)) / dt
            self.vel = v if not self.has_vel else VEL_SMOOTH * v + (1 - VEL_SMOOTH) * self.vel
            self.has_vel = True
        self.box, self.t, self.row = box.astype(np.float64), t, row
        if emb is not None:
            e = _normalise(emb)
            self.emb = e if self.emb is None else _normalise(EMB_MOMENTUM * self.emb + (1 - EMB_MOMENTUM) * e)
        self.n += 1
        self.sum_size += float(np.sqrt(max((box[2] - box[0]) * (box[3] - box[1]), 0.0)))
        self.sum_dist += center_dist
        self.sum_score += score


def _centre(box) -> np.ndarray:
    return np.array([(box[0] + box[2]) / 2, (box[1] + box[3]) / 2], np.float64)


class Tracker:
    """Online multi-face tracker. Call ``update`` once per frame, in order, including frames with
    no detections (the frame rows in ``summary`` count those calls).

    iou_threshold: min IoU (0..1) between a track's predicted box and a detection.
    max_gap_sec: seconds a track stays alive without detections.
    min_track_len: frames; shorter tracks are ignored by ``select`` and the primary choice.
    image_size: (width, height) in pixels, for the centrality term (may also be given to update).
    emb_threshold: min cosine similarity for a match when embeddings are given.
    emb_weight: weight of (1 - cosine) in the cost next to (1 - IoU).
    """

    def __init__(self, iou_threshold: float = IOU_THRESHOLD, max_gap_sec: float = MAX_GAP_SEC,
                 min_track_len: int = MIN_TRACK_LEN, image_size: tuple[int, int] | None = None,
                 emb_threshold: float = EMB_THRESHOLD, emb_weight: float = EMB_WEIGHT):
        self.iou_threshold = float(iou_threshold)
        self.max_gap_sec = float(max_gap_sec)
        self.min_track_len = int(min_track_len)
        self.image_size = image_size
        self.emb_threshold = float(emb_threshold)
        self.emb_weight = float(emb_weight)
        self.live: list[_Track] = []    # tracks that may still be continued
        self.ended: list[_Track] = []   # finished tracks (summary sums only)
        self.row = -1                   # row of the last frame fed
        self.shot = 0                   # cuts seen so far
        self.next_id = 0

    def _center_dist(self, box) -> float:
        if self.image_size is None:
            return float("nan")
        w, h = self.image_size
        c = _centre(box) - (w / 2, h / 2)
        return float(min(np.hypot(*c) / (0.5 * np.hypot(w, h)), 1.0))

    def update(self, t_sec: float, boxes_xyxy, scores=None, kps5=None, cut: bool = False,
               embeddings=None, image_size: tuple[int, int] | None = None) -> np.ndarray:
        """Associate one frame's detections with the live tracks.

        t_sec: frame time (s). boxes_xyxy [n,4] pixels. scores [n] (None: 1). kps5 [n,5,2] or None
        (accepted for a uniform call; not used for association). cut: this frame starts a new shot.
        embeddings [n,D] or None. Returns track ids [n] int64 (every detection gets one).
        """
        t = float(t_sec)
        self.row += 1
        if image_size is not None:
            self.image_size = tuple(image_size)
        boxes = np.asarray(boxes_xyxy, np.float64).reshape(-1, 4)
        n = len(boxes)
        scores = np.ones(n) if scores is None else np.asarray(scores, np.float64).reshape(n)
        embs = None if embeddings is None or n == 0 else np.asarray(embeddings, np.float64).reshape(n, -1)

        # end tracks cut off by a scene cut or gone for too long
        if cut:
            self.shot += 1
            self.ended += self.live
            self.live = []
        alive = [t - tr.t <= self.max_gap_sec + GAP_TOLERANCE_SEC for tr in self.live]
        keep = [tr for tr, a in zip(self.live, alive) if a]
        self.ended += [tr for tr, a in zip(self.live, alive) if not a]
        self.live = keep

        ids = np.full(n, -1, np.int64)
        matched = self._associate(t, boxes, embs)
        for i, j in matched:
            tr = self.live[i]
            tr.add(boxes[j], t, self.row, scores[j], None if embs is None else embs[j],
                   self._center_dist(boxes[j]))
            ids[j] = tr.id
        for j in np.flatnonzero(ids < 0):   # unmatched detections start tracks, in detection order
            tr = _Track(self.next_id, t, self.row, self.shot)
            tr.add(boxes[j], t, self.row, scores[j], None if embs is None else embs[j],
                   self._center_dist(boxes[j]))
            self.live.append(tr)
            ids[j] = tr.id
            self.next_id += 1
        return ids

    def _associate(self, t, boxes, embs) -> list[tuple[int, int]]:
        """Hungarian matching of live tracks to detections -> [(track index, detection index)]."""
        if not self.live or not len(boxes):
            return []
        pred = np.stack([tr.predict(t) for tr in self.live])
        iou = iou_matrix(pred, boxes)
        # a track may also match where it was last seen: after a gap, and when the prediction
        # overshoots over long time steps (sparse --fps sampling, a turn of direction)
        last = np.stack([tr.box for tr in self.live])
        iou = np.maximum(iou, iou_matrix(last, boxes))
        cost = 1.0 - iou
        allowed = iou >= self.iou_threshold
        if embs is not None:
            have = np.array([tr.emb is not None for tr in self.live])
            if have.any():
                cos = np.ones_like(iou)
                cos[have] = np.stack([tr.emb for tr in self.live if tr.emb is not None]) @ _normalise(embs).T
                cost += self.emb_weight * (1.0 - cos)
                allowed &= cos >= self.emb_threshold
        cost = np.where(allowed, cost, 1e6)
        rows, cols = linear_sum_assignment(cost)
        return [(int(i), int(j)) for i, j in zip(rows, cols) if allowed[i, j]]

    def summary(self) -> dict[str, np.ndarray]:
        """Per-track arrays, sorted by id (see the module docstring for the columns and PRIMARY_RULE)."""
        tracks = sorted(self.ended + self.live, key=lambda tr: tr.id)
        n = np.array([tr.n for tr in tracks], np.int64)
        cols = {
            "id": np.array([tr.id for tr in tracks], np.int64),
            "first_frame": np.array([tr.first_frame for tr in tracks], np.int64),
            "last_frame": np.array([tr.row for tr in tracks], np.int64),
            "first_t": np.array([tr.first_t for tr in tracks], np.float64),
            "last_t": np.array([tr.t for tr in tracks], np.float64),
            "n_frames": n,
            "mean_size": np.array([tr.sum_size for tr in tracks], np.float64) / np.maximum(n, 1),
            "mean_center_dist": np.array([tr.sum_dist for tr in tracks], np.float64) / np.maximum(n, 1),
            "mean_score": np.array([tr.sum_score for tr in tracks], np.float64) / np.maximum(n, 1),
            "shot": np.array([tr.shot for tr in tracks], np.int64),
        }
        cols["score"] = primary_score(cols["n_frames"], cols["mean_size"], cols["mean_center_dist"],
                                      self.min_track_len)
        primary = np.zeros(len(tracks), bool)
        if len(tracks) and cols["score"].max() > 0:
            primary[int(np.argmax(cols["score"]))] = True
        cols["primary"] = primary
        return cols

    def select(self, track_ids, max_faces: int | None = None, primary_only: bool = False,
               per_shot: bool = False) -> np.ndarray:
        """Boolean mask [N] over detections ``track_ids`` [N] (as returned by update): see ``select``."""
        return select(track_ids, self.summary(), max_faces, primary_only, per_shot)


def primary_score(n_frames, mean_size, mean_center_dist, min_track_len: int = 1) -> np.ndarray:
    """PRIMARY_RULE score per track [T]; 0 for tracks shorter than min_track_len frames."""
    n = np.asarray(n_frames, np.float64)
    centrality = 1.0 - 0.5 * np.nan_to_num(np.asarray(mean_center_dist, np.float64), nan=0.0)
    return np.where(n >= min_track_len, n * np.asarray(mean_size, np.float64) * centrality, 0.0)


def select(track_ids, summary: dict, max_faces: int | None = None, primary_only: bool = False,
           per_shot: bool = False) -> np.ndarray:
    """Mask [N] of the detections to keep: those of the ``max_faces`` best-scoring tracks (all tracks
    when None), or of the best one when ``primary_only``; with ``per_shot`` the choice is made in
    each shot separately. Tracks with score 0 (shorter than min_track_len) are never kept."""
    track_ids = np.asarray(track_ids, np.int64)
    k = 1 if primary_only else max_faces
    ids, score, shot = summary["id"], summary["score"], summary["shot"]
    keep_ids = []
    for s in (np.unique(shot) if per_shot else [None]):
        m = np.flatnonzero((score > 0) & ((shot == s) if per_shot else True))
        order = m[np.lexsort((ids[m], -score[m]))]   # best score first, ties: lowest id
        keep_ids.append(ids[order if k is None else order[:k]])
    keep_ids = np.concatenate(keep_ids) if keep_ids else np.zeros(0, np.int64)
    return np.isin(track_ids, keep_ids)


def rejoin_tracks(track_ids, frames, embeddings, threshold: float = REJOIN_THRESHOLD,
                  shots=None) -> np.ndarray:
    """Merge tracks of the same identity that never share a frame.

    track_ids [N], frames [N] (frame row of each detection), embeddings [N,D]; shots [N] optional
    (shot index of each detection: tracks of different shots are then never merged). Greedy: the
    pair of groups with the highest cosine between mean (unit-normalised) embeddings is merged while
    that cosine > threshold and the two share no frame. Returns new ids [N] int64, renumbered 0, 1,
    ... in order of first appearance.
    """
    track_ids = np.asarray(track_ids, np.int64)
    if not len(track_ids):
        return track_ids.copy()
    uniq, inv = np.unique(track_ids, return_inverse=True)
    emb = _normalise(np.asarray(embeddings, np.float64).reshape(len(track_ids), -1))
    sums = np.zeros((len(uniq), emb.shape[1]))
    np.add.at(sums, inv, emb)
    return rejoin_from_sums(track_ids, frames, uniq, sums, threshold, shots)


def rejoin_from_sums(track_ids, frames, uniq, sums, threshold: float = REJOIN_THRESHOLD,
                     shots=None) -> np.ndarray:
    """``rejoin_tracks`` from per-track sums of unit embeddings (what a streaming pass keeps):
    ``uniq`` [T] the sorted distinct ids of ``track_ids``, ``sums`` [T,D] their sums. Returns new
    ids [N] int64 (same rules and numbering as ``rejoin_tracks``)."""
    track_ids = np.asarray(track_ids, np.int64)
    frames = np.asarray(frames, np.int64)
    if not len(track_ids):
        return track_ids.copy()
    uniq = np.asarray(uniq, np.int64)
    inv = np.searchsorted(uniq, track_ids)
    T = len(uniq)
    sums = np.array(sums, np.float64).reshape(T, -1)
    # co-occurrence: tracks seen in the same frame (or in different shots) can never merge
    fr_u, fr_inv = np.unique(frames, return_inverse=True)
    occ = csr_matrix((np.ones(len(inv)), (inv, fr_inv)), shape=(T, len(fr_u)))   # track x frame
    blocked = (occ @ occ.T).toarray() > 0
    if shots is not None:
        shot_of = np.zeros(T, np.int64)
        shot_of[inv] = np.asarray(shots, np.int64)
        blocked |= shot_of[:, None] != shot_of[None, :]
    np.fill_diagonal(blocked, True)
    means = _normalise(sums)
    sim = np.where(blocked, -np.inf, means @ means.T)
    group = np.arange(T)   # group[i]: representative of track i
    while True:
        i, j = np.unravel_index(int(np.argmax(sim)), sim.shape)
        if not sim[i, j] > threshold:
            break
        i, j = min(i, j), max(i, j)   # merge j into i
        group[group == j] = i
        sums[i] += sums[j]
        blocked[i] |= blocked[j]
        blocked[:, i] = blocked[i]
        sim[j, :] = sim[:, j] = -np.inf
        row = _normalise(sums[i]) @ _normalise(sums).T
        row[blocked[i]] = -np.inf
        row[group != np.arange(T)] = -np.inf   # merged-away tracks
        sim[i, :] = sim[:, i] = row
        sim[i, i] = -np.inf
    new = group[inv]
    # renumber by first appearance (frame, then the original id)
    order = np.lexsort((track_ids, frames))
    _, first = np.unique(new[order], return_index=True)
    rank = np.empty(len(first), np.int64)
    rank[np.argsort(first)] = np.arange(len(first))
    return rank[np.searchsorted(np.unique(new), new)]


def merge_summary(summary: dict, new_id: np.ndarray, min_track_len: int = MIN_TRACK_LEN) -> dict:
    """The ``Tracker.summary`` table after re-joining: ``new_id`` [T] gives the new id of each row
    of ``summary``. Merged rows: first/last frame and time = min/max, n_frames summed, mean_* =
    n_frames-weighted means, shot = the shot of the earliest member; score and primary recomputed
    (PRIMARY_RULE). Rows sorted by new id."""
    new_id = np.asarray(new_id, np.int64)
    ids = np.unique(new_id)
    inv = np.searchsorted(ids, new_id)
    T = len(ids)
    n = np.asarray(summary["n_frames"], np.float64)
    out = {"id": ids}
    for k, fn in (("first_frame", np.minimum), ("first_t", np.minimum), ("last_frame", np.maximum),
                  ("last_t", np.maximum)):
        v = np.asarray(summary[k])
        acc = np.full(T, np.inf if fn is np.minimum else -np.inf)
        fn.at(acc, inv, v.astype(np.float64))
        out[k] = acc.astype(v.dtype)
    out["n_frames"] = np.bincount(inv, weights=n, minlength=T).astype(np.int64)
    for k in ("mean_size", "mean_center_dist", "mean_score"):
        w = np.bincount(inv, weights=np.asarray(summary[k], np.float64) * n, minlength=T)
        out[k] = w / np.maximum(out["n_frames"], 1)
    first_row = np.full(T, -1)
    for r in np.argsort(np.asarray(summary["first_frame"]), kind="stable")[::-1]:
        first_row[inv[r]] = r
    out["shot"] = np.asarray(summary["shot"], np.int64)[first_row]
    out["score"] = primary_score(out["n_frames"], out["mean_size"], out["mean_center_dist"], min_track_len)
    primary = np.zeros(T, bool)
    if T and out["score"].max() > 0:
        primary[int(np.argmax(out["score"]))] = True
    out["primary"] = primary
    return {k: out[k] for k in summary}


class CutDetector:
    """Hard-cut and fade-to-black detector, fed RGB frames uint8 [H,W,3] one at a time.

    ``__call__(frame) -> bool``: True when the frame starts a new shot: its hue-saturation histogram
    is farther than ``threshold`` (Hellinger distance, 0..1) from the previous frame's, or the
    frame is the first black frame after picture, or the first picture after black. The first frame
    fed returns False; ``last_distance`` holds the last distance computed (for logging/tuning).
    """

    def __init__(self, threshold: float = CUT_THRESHOLD, width: int = CUT_WIDTH):
        import cv2

        self._cv2 = cv2
        self.threshold = float(threshold)
        self.width = int(width)
        self.prev_hist: np.ndarray | None = None
        self.prev_black: bool | None = None
        self.last_distance = 0.0

    def reset(self) -> None:
        """Forget the previous frame (call between videos)."""
        self.prev_hist, self.prev_black, self.last_distance = None, None, 0.0

    def __call__(self, frame: np.ndarray) -> bool:
        cv2 = self._cv2
        h, w = frame.shape[:2]
        sw = min(self.width, w)
        sh = max(1, round(h * sw / w))
        # bilinear sampling, not area averaging: a histogram only needs a fair sample of pixels,
        # and this costs ~0.06 ms whatever the frame size (INTER_AREA: 0.7 ms at 640x360, 8 at 1080p)
        small = cv2.resize(frame, (sw, sh), interpolation=cv2.INTER_LINEAR)
        gray = cv2.cvtColor(small, cv2.COLOR_RGB2GRAY)
        black = np.count_nonzero(gray > BLACK_LUMA) < BLACK_FRAC * gray.size
        hsv = cv2.cvtColor(small, cv2.COLOR_RGB2HSV)
        hist = cv2.calcHist([hsv], [0, 1], None, list(CUT_BINS), [0, 180, 0, 256]).ravel()
        hist /= max(float(hist.sum()), 1.0)
        prev_hist, prev_black = self.prev_hist, self.prev_black
        self.prev_hist, self.prev_black = hist, black
        if prev_hist is None:
            return False
        self.last_distance = float(np.sqrt(max(0.0, 1.0 - float(np.sum(np.sqrt(hist * prev_hist))))))
        if black or prev_black:
            return black != prev_black
        return self.last_distance > self.threshold


# --- the `track` stage -------------------------------------------------------------------------

from .. import stages  # noqa: E402  (the stage registry imports this module)

FILTER_COPY_ROWS = 1024  # rows copied at a time when --max-faces/--primary rewrites faces/*


def filter_faces(group, mask: np.ndarray) -> None:
    """Keep only the rows ``mask`` of every ``faces/*`` dataset (recursively), in place.

    Datasets are rewritten in blocks of FILTER_COPY_ROWS rows, keeping dtype, chunking,
    compression and attributes, so memory stays bounded even for crops.
    """
    import h5py

    n = len(mask)
    keep = int(mask.sum())
    names = []
    group.visititems(lambda name, obj: names.append(name) if isinstance(obj, h5py.Dataset) else None)
    for name in names:
        ds = group[name]
        if ds.shape[:1] != (n,):
            continue
        tmp_name = name + ".__filtered"
        new = group.create_dataset(tmp_name, shape=(keep, *ds.shape[1:]), dtype=ds.dtype,
                                   maxshape=(None, *ds.shape[1:]), chunks=ds.chunks, compression=ds.compression,
                                   compression_opts=ds.compression_opts)
        for k, v in ds.attrs.items():
            new.attrs[k] = v
        out = 0
        for a in range(0, n, FILTER_COPY_ROWS):
            m = mask[a:a + FILTER_COPY_ROWS]
            if m.any():
                rows = ds[a:a + len(m)][m]
                new[out:out + len(rows)] = rows
                out += len(rows)
        del group[name]
        group.move(tmp_name, name)


@stages.register
class TrackStage(stages.Stage):
    """``track``: track ids per face (``faces/track``), shots per frame (``frames/shot``) and the
    ``tracks/`` table; ``--max-faces K`` / ``--primary`` keep only the best tracks' faces."""

    name = "track"
    consumes = "frames"
    requires = ("detect",)
    outputs = ("faces/track", "frames/shot", "tracks")

    def __init__(self, config):
        super().__init__(config)
        self._rejoin = None
        if config.track_rejoin is not None:
            if not -1.0 <= float(config.track_rejoin) <= 1.0:
                raise stages.StageError(f"--track-rejoin {config.track_rejoin}: a cosine, between -1 and 1")
            if config.track_videos:
                raise stages.StageError("--track-rejoin cannot be combined with --track-videos "
                                        "(the per-track videos are written before tracks are re-joined)")
            from . import embed

            self._rejoin = embed.load(REJOIN_MODEL, config.weights, config.embed_batch)

    def _max_gap(self) -> float:
        """--track-max-gap, but never less than 2.5 sampling periods (sparse --fps sampling)."""
        c = self.config
        return max(c.track_max_gap, 2.5 / c.fps) if c.fps else c.track_max_gap

    @property
    def params(self) -> dict:
        c = self.config
        return {"iou_threshold": IOU_THRESHOLD, "max_gap_sec": self._max_gap(), "cut_threshold": CUT_THRESHOLD,
                "max_faces": c.max_faces, "primary": c.primary, "per_shot": c.per_shot,
                "primary_rule": PRIMARY_RULE,
                # only when asked for: stores made without it keep their params (and resume)
                **({"rejoin": {"threshold": float(c.track_rejoin), "model": REJOIN_MODEL,
                               "weights_sha256": self._rejoin.weights.sha256, "across_cuts": True}}
                   if self._rejoin is not None else {})}

    def begin(self, writer, info) -> None:
        self._sums: dict[int, np.ndarray] = {}  # track id -> sum of unit SFace embeddings (--track-rejoin)
        self._tracker = Tracker(max_gap_sec=self._max_gap(), image_size=(info.width, info.height))
        self._cuts = CutDetector()
        self._shot = 0
        writer.create("faces/track", dtype="i8", attrs={"description": "track id of each face (tracks/id)"})
        writer.create("frames/shot", dtype="i4", attrs={
            "description": "shot index of each frame: +1 at every detected scene cut",
            "cut_threshold": CUT_THRESHOLD, "method": "Hellinger distance of H-S histograms"})

    def on_frames(self, batch, row0: int, writer) -> None:
        f = batch.faces
        ids = np.full(len(f["frame"]), -1, np.int64)
        shots = np.zeros(len(batch.t_sec), np.int32)
        for i, (rgb, t) in enumerate(zip(batch.rgb, batch.t_sec)):
            cut = self._cuts(rgb)
            self._shot += bool(cut)
            shots[i] = self._shot
            rows = np.flatnonzero(f["frame"] == row0 + i)
            ids[rows] = self._tracker.update(float(t), f["box"][rows], f["score"][rows], f["kps5"][rows], cut=cut)
        f["track"] = ids
        if self._rejoin is not None and len(ids):
            from . import embed

            e = embed.embed_faces(self._rejoin, batch.rgb, np.asarray(f["frame"]) - row0, f["kps5"], batch.scale)
            f[f"embed/{REJOIN_MODEL}"] = e   # the embed stage reuses it
            for tid, u in zip(ids.tolist(), _normalise(e)):
                acc = self._sums.get(tid)
                self._sums[tid] = u if acc is None else acc + u
        writer.append("faces/track", ids)
        writer.append("frames/shot", shots)

    def end(self, writer) -> None:
        c = self.config
        summary = self._tracker.summary()
        track_ids = writer.group["faces/track"][()]
        if self._rejoin is not None and len(track_ids):
            uniq = np.array(sorted(self._sums), np.int64)
            new = rejoin_from_sums(track_ids, writer.group["faces/frame"][()], uniq,
                                   np.stack([self._sums[t] for t in uniq]), float(c.track_rejoin))
            mapping = dict(zip(track_ids.tolist(), new.tolist()))
            summary = merge_summary(summary, np.array([mapping[t] for t in summary["id"].tolist()]))
            writer.group["faces/track"][...] = new
            writer.rejoined = mapping   # old id -> new id (the crop stage renames its track folders)
            track_ids = new
        filtering = bool(c.max_faces or c.primary)
        kept_tracks = summary["id"]
        if filtering:
            mask = select(track_ids, summary, max_faces=c.max_faces, primary_only=c.primary, per_shot=c.per_shot)
            kept_tracks = np.unique(track_ids[mask])
            filter_faces(writer.group["faces"], mask)
            writer.filtered = {"max_faces": c.max_faces, "primary": c.primary, "per_shot": c.per_shot,
                               "kept_tracks": kept_tracks.tolist()}
        g = writer.group.require_group("tracks")
        for k, v in summary.items():
            v = np.asarray(v)
            g.create_dataset(k, data=v.astype(np.uint8) if v.dtype == bool else v)
        g.create_dataset("kept", data=np.isin(summary["id"], kept_tracks).astype(np.uint8))
        from ..store import set_attrs

        set_attrs(g, {"primary_rule": PRIMARY_RULE, **self.params,
                      "description": "one row per track; first_frame/last_frame are rows of frames/"})
