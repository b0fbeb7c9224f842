"""The ``detect`` stage: faces in every processed frame -> ``faces/{frame,box,score,kps5}``.

Boxes and key points are stored in display pixels of the source video (after rotation, before
``--max-side`` downscaling), xyxy, float32, as the detector gives them (a box may extend past the
image border). Frames whose long side exceeds ``det_size`` are downscaled for the detector (never
upscaled): on the labelled PASCAL faces YuNet finds 43/43 at native size and upscaling only
costs time; see docs/models.md for the measurements behind the defaults.
"""

from __future__ import annotations

import numpy as np

from .. import stages, zoo
from ..media import to_display
from .yunet import YuNet

DETECTORS = {"yunet": YuNet}

_CACHE: dict[tuple, object] = {}  # model cache: one detector per (name, weights, thresholds) per process


def load_detector(name: str, weights: dict | None = None, score_threshold: float = 0.8, nms: float = 0.3):
    """The detector ``name`` (loaded once per process and cached)."""
    if name not in DETECTORS:
        raise zoo.ModelError(f"unknown detector {name!r} (available: {', '.join(DETECTORS)})")
    resolved = zoo.resolve(name, weights)
    key = (name, str(resolved.path), resolved.sha256, score_threshold, nms)
    if key not in _CACHE:
        _CACHE[key] = DETECTORS[name](resolved, score_threshold, nms)
    return _CACHE[key]


@stages.register
class DetectStage(stages.Stage):
    name = "detect"
    consumes = "frames"
    outputs = ("faces/frame", "faces/box", "faces/score", "faces/kps5")

    def __init__(self, config):
        super().__init__(config)
        self.detector = load_detector(config.detector, config.weights, config.det_threshold, config.det_nms)

    @property
    def params(self) -> dict:
        c = self.config
        return {"detector": c.detector, "weights_sha256": self.detector.weights.sha256,
                "det_threshold": c.det_threshold, "det_nms": c.det_nms, "det_size": c.det_size}

    def begin(self, writer, info) -> None:
        model = {"model": self.config.detector, "weights_sha256": self.detector.weights.sha256,
                 "params": self.params}
        writer.create("faces/frame", dtype="i8", attrs={"description": "row into frames/ of each face"})
        writer.create("faces/box", (4,), "f4", attrs={**model, "units": "pixels", "format": "xyxy"})
        writer.create("faces/score", (), "f4", attrs=model)
        writer.create("faces/kps5", (5, 2), "f4", attrs={
            **model, "units": "pixels",
            "points": ["right_eye", "left_eye", "nose", "right_mouth", "left_mouth"]})

    def on_frames(self, batch, row0: int, writer) -> None:
        import cv2

        frame_rows, boxes, scores, kps = [], [], [], []
        for i, rgb in enumerate(batch.rgb):
            h, w = rgb.shape[:2]
            s = 1.0
            if self.config.det_size and max(h, w) > self.config.det_size:
                s = self.config.det_size / max(h, w)
                rgb = cv2.resize(rgb, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)
                s = (rgb.shape[1] / w + rgb.shape[0] / h) / 2  # the scale actually applied
            b, sc, k = self.detector.detect(rgb)
            total = s * batch.scale  # display -> detector image (two area resizes compose)
            frame_rows.append(np.full(len(b), row0 + i, np.int64))
            boxes.append(to_display(b, total))
            scores.append(sc)
            kps.append(to_display(k, total))
        batch.faces.update(frame=np.concatenate(frame_rows), box=np.concatenate(boxes).astype(np.float32),
                           score=np.concatenate(scores).astype(np.float32),
                           kps5=np.concatenate(kps).astype(np.float32))
        self.write_faces(writer, batch)
