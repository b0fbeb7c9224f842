"""The ``detect`` stage: faces in every processed frame -> ``faces/{frame,box,score,kps5,source}``.

With ``--detect-every N`` (N > 1) the detector runs on keyframes only and faces are followed from
their landmarks in between (``facekit.face.follow``); ``faces/source`` says which faces were
detected (0) and which followed (1).

Boxes and key points are stored in display pixels of the source video (after rotation, before
``--max-side`` downscaling), xyxy, float32, as the detector gives them (a box may extend past the
image border). Frames whose long side exceeds ``det_size`` are downscaled for the detector (never
upscaled): on the labelled PASCAL faces YuNet finds 43/43 at native size and upscaling only
costs time; see docs/models.md for the measurements behind the defaults.
"""

from __future__ import annotations

import numpy as np

from .. import stages, zoo
from ..media import to_display, to_processed
from . import follow
from .yunet import YuNet

DETECTORS = {"yunet": YuNet}

_CACHE: dict[tuple, object] = {}  # model cache: one detector per (name, weights, thresholds) per process


def load_detector(name: str, weights: dict | None = None, score_threshold: float = 0.8, nms: float = 0.3,
                  device: str = "cpu"):
    """The detector ``name`` (loaded once per process and cached). ``device``: ``"cpu"``
    (onnxruntime) or a torch CUDA device ``"cuda:N"`` (the same graph in PyTorch, ``YuNetTorch``)."""
    if name not in DETECTORS:
        raise zoo.ModelError(f"unknown detector {name!r} (available: {', '.join(DETECTORS)})")
    resolved = zoo.resolve(name, weights)
    key = (name, str(resolved.path), resolved.sha256, score_threshold, nms, device)
    if key not in _CACHE:
        if device != "cpu":
            from .yunet_torch import YuNetTorch

            _CACHE[key] = YuNetTorch(resolved, score_threshold, nms, device=device)
        else:
            _CACHE[key] = DETECTORS[name](resolved, score_threshold, nms)
    return _CACHE[key]


@stages.register
class DetectStage(stages.Stage):
    name = "detect"
    consumes = "frames"
    outputs = ("faces/frame", "faces/box", "faces/score", "faces/kps5", "faces/source")

    def __init__(self, config):
        super().__init__(config)
        self.every = int(config.detect_every)
        if self.every < 1 or self.every != config.detect_every:
            raise stages.StageError(f"--detect-every {config.detect_every}: must be a whole number >= 1")
        from .. import device

        dev = device.torch_device(config)  # DeviceError (one line) when CUDA is asked for and unusable
        self.on_gpu = dev != "cpu"
        self.detector = load_detector(config.detector, config.weights, config.det_threshold, config.det_nms, dev)
        self.landmarker = None
        self.prepares = True  # detection (or following) runs ahead, in the engine's background thread
        #: stages whose stored outputs were computed together with this one's: reused only together
        self.reuse_with = ("landmarks",) if self.every > 1 else ()
        if self.every > 1:
            if config.landmarker != "dlib68":
                raise stages.StageError(f"--detect-every {self.every} follows faces with dlib68 landmarks; "
                                        f"--landmarker {config.landmarker} needs --detect-every 1")
            from .landmarks import load_landmarker

            self.landmarker = load_landmarker("dlib68", config.weights)

    @property
    def params(self) -> dict:
        c = self.config
        p = {"detector": c.detector, "runtime": self.detector.runtime, "weights_sha256": self.detector.weights.sha256,
             "det_threshold": c.det_threshold, "det_nms": c.det_nms, "det_size": c.det_size}
        if self.every > 1:  # (absent for 1, so stores of earlier versions stay valid)
            from .tracking import CUT_THRESHOLD

            p["detect_every"] = self.every
            p["follow"] = {
                "landmarker": self.landmarker.name, "landmarker_sha256": self.landmarker.weights.sha256,
                "landmarker_runtime": self.landmarker.runtime, "landmarker_preprocess": self.landmarker.PREPROCESS,
                "kps5_offset": [list(o) for o in follow.KPS5_OFFSET], "box_from_kps5": list(follow.BOX_FROM_KPS5),
                "velocity_gain": follow.VELOCITY_GAIN, "max_gap_sec": follow.MAX_GAP_SEC,
                "min_iod_px": follow.MIN_IOD_PX, "outside_frac": follow.OUTSIDE_FRAC,
                "scale_jump": follow.SCALE_JUMP, "move_jump": follow.MOVE_JUMP, "shape_jump": follow.SHAPE_JUMP,
                "dup_iou": follow.DUP_IOU, "cut_threshold": CUT_THRESHOLD,
                "patch_side": follow.PATCH_SIDE, "min_ncc": follow.MIN_NCC}
        return p

    def begin(self, writer, info) -> None:
        model = {"model": self.config.detector, "weights_sha256": self.detector.weights.sha256,
                 "params": self.params}
        writer.create("faces/frame", dtype="i8", attrs={"description": "row into frames/ of each face"})
        writer.create("faces/box", (4,), "f4", attrs={**model, "units": "pixels", "format": "xyxy"})
        writer.create("faces/score", (), "f4", attrs={
            **model, "followed_faces": "the score of the detection the face was followed from"})
        writer.create("faces/source", (), "u1", attrs={
            "description": "0: found by the detector; 1: followed from the previous frame's landmarks "
                           "(--detect-every N > 1)", "detect_every": self.every})
        writer.create("faces/kps5", (5, 2), "f4", attrs={
            **model, "units": "pixels",
            "points": ["right_eye", "left_eye", "nose", "right_mouth", "left_mouth"]})

        if self.every > 1:
            from .tracking import CutDetector

            self._follower = None  # made at the first batch (needs the batch scale)
            self._cuts = CutDetector()
            self._key_row = 0  # the next frame's row, in the keyframe step

    def end(self, writer) -> None:
        fol = getattr(self, "_follower", None) if self.every > 1 else None
        if fol is not None:  # how the frames were processed, and why frames off the N grid were keyframes
            from ..store import set_attrs

            set_attrs(writer.group["faces/source"], {
                "detected_frames": fol.n_detected, "followed_frames": fol.n_followed,
                "extra_keyframes": dict(sorted(fol.reasons.items()))})

    def _det_input(self, rgb):
        """The detector's image of one processed frame and its scale (``--det-size`` downscaling)."""
        import cv2

        h, w = rgb.shape[:2]
        if self.config.det_size and max(h, w) > self.config.det_size:
            s = self.config.det_size / max(h, w)
            rgb = cv2.resize(rgb, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)
            return rgb, (rgb.shape[1] / w + rgb.shape[0] / h) / 2  # the scale actually applied
        return rgb, 1.0

    def _detect_many(self, frames, scale: float):
        """Faces of processed frames: per frame (boxes [n,4], scores [n], kps5 [n,5,2]) in display
        pixels. Frames go to the detector together (one batched call per run of same-size images)."""
        inputs = [self._det_input(rgb) for rgb in frames]
        images = [im for im, _ in inputs]
        if isinstance(frames, np.ndarray) and all(s == 1.0 for _, s in inputs):
            images = frames  # the batch array itself (the GPU detector uploads it without a copy)
        out = []
        for (_, s), (b, sc, k) in zip(inputs, self.detector.detect_batch(images)):
            total = s * scale  # display -> detector image (two area resizes compose)
            out.append((to_display(b, total), sc, to_display(k, total)))
        return out

    def _detect(self, rgb, scale: float):
        """Faces of one processed frame: boxes [n,4], scores [n], kps5 [n,5,2] in display pixels."""
        return self._detect_many([rgb], scale)[0]

    def prepare(self, batch) -> None:
        """Detect (or, with keyframes, detect and follow) the faces of a batch ahead of ``on_frames``:
        the engine calls this in a background thread, batch after batch in order, one batch ahead,
        so that detection overlaps the other stages."""
        if self.every == 1:
            batch.prepared[self.name] = self._detect_many(batch.rgb, batch.scale)
        else:
            batch.prepared[self.name] = self._follow_frames(batch)

    def prepare_steps(self) -> list:
        """With keyframes, two steps in two threads: the scene-cut test of every frame and the
        detector on the frames of the N grid (which are always keyframes), then following, which
        goes frame by frame and runs the detector itself only on the other keyframes."""
        return [self._prepare_keyframes, self.prepare] if self.every > 1 else [self.prepare]

    def _prepare_keyframes(self, batch) -> None:
        """Scene cuts [B] and the faces of the batch's grid frames (row % N == 0), for ``_follow_frames``."""
        cuts, grid = [], []
        for i, rgb in enumerate(batch.rgb):
            cuts.append(bool(self._cuts(rgb)))
            if self._key_row % self.every == 0:
                grid.append(i)
            self._key_row += 1
        found = self._detect_many([batch.rgb[i] for i in grid], batch.scale) if grid else []
        batch.prepared[self.name + ":keyframes"] = {"cut": cuts, "found": dict(zip(grid, found))}

    def on_frames(self, batch, row0: int, writer) -> None:
        if self.every > 1:
            return self._on_frames_follow(batch, row0, writer)
        found = batch.prepared.pop(self.name, None)
        if found is None:
            found = self._detect_many(batch.rgb, batch.scale)
        frame_rows, boxes, scores, kps = [], [], [], []
        for i, (b, sc, k) in enumerate(found):
            frame_rows.append(np.full(len(b), row0 + i, np.int64))
            boxes.append(b)
            scores.append(sc)
            kps.append(k)
        n = sum(len(b) for b in boxes)
        batch.faces.update(frame=np.concatenate(frame_rows), box=np.concatenate(boxes).astype(np.float32),
                           score=np.concatenate(scores).astype(np.float32),
                           kps5=np.concatenate(kps).astype(np.float32), source=np.zeros(n, np.uint8))
        self.write_faces(writer, batch)

    def _follow_frames(self, batch) -> dict:
        """Keyframes and following, frame by frame (each frame needs the previous one's landmarks):
        the faces of the batch's frames, concatenated (display pixels), and ``count`` [B], the faces
        of each frame. The landmarks computed here are handed to the ``landmarks`` stage
        (``followed_landmarks``): for followed faces they come from the predicted key points."""
        from .landmarks import box_from_kps5

        bs = batch.scale
        if self._follower is None or self._follower_scale != bs:
            def detect(rgb):
                b, sc, k = self._detect(rgb, bs)
                return to_processed(b, bs), sc, to_processed(k, bs)

            def landmark(rgb, kps5):
                return self.landmarker.predict(rgb, box_from_kps5(kps5), kps5)[0]

            def roundtrip(p):  # what the store holds (display pixels, float32), read back
                # float32 arithmetic, as the landmarks stage does on the stored values
                return to_processed(to_display(p, bs).astype(np.float32), bs).astype(np.float64)

            self._follower = follow.Follower(detect, landmark, self.every, self._cuts, roundtrip)
            self._follower_scale = bs
        # cuts and grid detections computed ahead (``_prepare_keyframes``), when the engine ran it
        pre = batch.prepared.pop(self.name + ":keyframes", None)
        count, box, score, kps, lms, src = [], [], [], [], [], []
        for i, (rgb, t) in enumerate(zip(batch.rgb, batch.t_sec)):
            cut = found = None
            if pre is not None:
                cut = pre["cut"][i]
                if i in pre["found"]:
                    b, sc, k = pre["found"][i]
                    found = to_processed(b, bs), sc, to_processed(k, bs)
            f = self._follower.step(rgb, float(t), cut=cut, detected=found)
            count.append(len(f["box"]))
            box.append(to_display(f["box"], bs))
            score.append(f["score"])
            kps.append(to_display(f["kps5"], bs))
            lms.append(to_display(f["landmarks"].astype(np.float32), bs))  # as the landmarks stage does
            src.append(f["source"])
        return {"count": np.asarray(count, np.int64),
                "box": np.concatenate(box).reshape(-1, 4).astype(np.float32),
                "score": np.concatenate(score).astype(np.float32),
                "kps5": np.concatenate(kps).reshape(-1, 5, 2).astype(np.float32),
                "source": np.concatenate(src).astype(np.uint8),
                "followed_landmarks": np.concatenate(lms).reshape(-1, 68, 2).astype(np.float32)}

    def _on_frames_follow(self, batch, row0: int, writer) -> None:
        got = batch.prepared.pop(self.name, None)
        if got is None:
            got = self._follow_frames(batch)
        count = got.pop("count")
        batch.faces.update(frame=np.repeat(row0 + np.arange(len(count), dtype=np.int64), count), **got)
        self.write_faces(writer, batch)
