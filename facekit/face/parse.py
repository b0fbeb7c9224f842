"""The ``parse`` stage: a label mask per face, in the face's aligned crop.

``faces/parsing`` [N,S,S] uint8 holds one label per crop pixel (the crop of ``faces/affine``,
``S`` = the crop size of the align template), with the label names as the dataset attribute
``labels`` (JSON list, index = value). Map a crop pixel ``(u, v)`` to the image with
``align.transform_points(faces/affine, (u, v))``.

Parsers (``--parser NAME``):

* ``landmarks68`` (embedded default, no weights, works offline): regions rendered from the 68
  iBUG landmarks (``faces/landmarks``) mapped into the crop, see ``render_landmarks68``.
  Labels (``LABELS``, the LaPa order without hair): background, skin, right_brow, left_brow,
  right_eye, left_eye, nose, upper_lip, inner_mouth, lower_lip.
* ``farl-lapa`` / ``farl-celebm``: FaRL's learned face parsers (download on demand, PyTorch),
  ``facekit.face.farl``.

Left/right are the SUBJECT's (as in CelebAMask-HQ's ``l_brow`` and facekit's ``KPS5_NAMES``):
``left_eye`` is the subject's left eye, on the IMAGE RIGHT of a frontal, unmirrored face; it is
drawn from iBUG points 42-47.

How ``landmarks68`` draws (all lengths in units of ``iod``, the distance between the two eye
centres, the means of points 36-41 and 42-47; "down" is the face's own down direction, the
perpendicular of the eye line pointing towards the chin):

* skin: the jaw line (points 0-16) closed over the top by a half ellipse from point 16 to point 0
  that reaches ``FOREHEAD_RATIO`` x (brows to nose base, along "down") above the brows. The 68
  points stop at the brows, so the forehead is extrapolated from the canon of facial thirds
  (hairline-to-brow = brow-to-nose-base, a ratio of 1.0), lowered to 0.8 because the top of the
  forehead is usually under hair; hair that covers the forehead is NOT detected (it is labelled
  skin), nor are ears, neck or hair (use a learned parser for those).
* brows: iBUG marks the UPPER edge of each brow (17-21, 22-26); the brow is a band from
  ``BROW_ABOVE`` above those points to ``BROW_BELOW`` below them, thinner towards the tail
  (``BROW_TAPER``, inner end first).
* eyes: the eye contours (36-41, 42-47).
* nose: from the bridge top (27) down both sides of the bridge (27-29, half widths
  ``NOSE_HALF_WIDTH``), the alae at the tip's height (half the nostril span 31-35), and the lower
  outline 31-35.
* lips: upper lip = outer 48-54 + inner 64..60; lower lip = outer 54-59,48 + inner 60,67..64;
  inner mouth = the inner contour 60-67 (drawn only when its area is at least one pixel).

Drawn with ``cv2.fillPoly`` at 1/2**``SHIFT`` px precision, later regions over earlier ones in
``DRAW_ORDER``: skin, nose, brows, eyes, inner mouth, upper lip, lower lip (so the lips own their
shared boundary with the inner mouth, and the eyes their boundary with the nose). Faces whose
landmarks are not finite get an all-background mask.
"""

from __future__ import annotations

import numpy as np

from .. import stages, zoo
from . import align

#: landmarks68 labels; index = stored value (LaPa's order without hair)
LABELS = ("background", "skin", "right_brow", "left_brow", "right_eye", "left_eye", "nose",
          "upper_lip", "inner_mouth", "lower_lip")
L = {name: i for i, name in enumerate(LABELS)}
#: later entries are drawn over earlier ones
DRAW_ORDER = ("skin", "nose", "right_brow", "left_brow", "right_eye", "left_eye", "inner_mouth",
              "upper_lip", "lower_lip")
SHIFT = 4  # fractional bits of cv2.fillPoly coordinates (1/16 px)
FOREHEAD_RATIO = 0.8  # forehead height / (brows -> nose base): the thirds canon (1.0) less hair cover
BROW_ABOVE = 0.04  # iod above the marked upper brow edge (annotation slack)
BROW_BELOW = 0.14  # iod: brow thickness below the marked upper edge
BROW_TAPER = (1.0, 1.0, 0.9, 0.75, 0.55)  # thickness factors from the inner end to the tail
NOSE_HALF_WIDTH = (0.10, 0.11, 0.13)  # iod, half widths of the bridge at points 27, 28, 29
FOREHEAD_ARC_POINTS = 24  # polygon vertices of the forehead half ellipse
PARSERS = ("landmarks68", "farl-lapa", "farl-celebm")
MASK_CHUNK = 16  # masks per HDF5 chunk (gzip-compressed)
DEFAULT_PARSER = "landmarks68"

#: RGB colours of the preview overlay and of the palette PNGs, by label name
COLOURS = {
    "background": (0, 0, 0), "skin": (204, 153, 102), "right_brow": (120, 60, 20), "left_brow": (160, 90, 40),
    "right_eye": (0, 120, 255), "left_eye": (0, 200, 255), "nose": (255, 200, 0), "upper_lip": (230, 30, 80),
    "inner_mouth": (90, 0, 40), "lower_lip": (255, 90, 140), "hair": (70, 40, 140), "neck": (170, 120, 90),
    "cloth": (60, 160, 60), "right_ear": (240, 150, 120), "left_ear": (255, 180, 150),
    "eyeglasses": (255, 255, 255), "hat": (120, 120, 120), "earring": (255, 255, 0), "necklace": (200, 200, 255),
}


def palette(labels) -> np.ndarray:
    """[len(labels), 3] uint8 RGB colours (unknown names get a grey)."""
    return np.array([COLOURS.get(n, (128, 128, 128)) for n in labels], np.uint8)


def _down(lm: np.ndarray, u: np.ndarray) -> np.ndarray:
    """The face's down direction: the eye line's perpendicular that points towards the chin."""
    d = np.array([-u[1], u[0]])
    eyes = (lm[36:42].mean(0) + lm[42:48].mean(0)) / 2
    return d if np.dot(lm[8] - eyes, d) >= 0 else -d


def region_polygons(lm: np.ndarray) -> dict[str, list[np.ndarray]]:
    """Polygons (float64 [P,2] pixels) of each region of one face from its 68 landmarks [68,2]."""
    lm = np.asarray(lm, np.float64)[:, :2]
    er, el = lm[36:42].mean(0), lm[42:48].mean(0)
    iod = float(np.linalg.norm(el - er))
    u = (el - er) / iod
    d = _down(lm, u)
    polys: dict[str, list[np.ndarray]] = {}

    # skin: jaw + forehead half ellipse from 16 over to 0
    p0, p16 = lm[0], lm[16]
    c = (p0 + p16) / 2
    brow = lm[17:27].mean(0)
    h_brow = max(float(np.dot(c - brow, d)), 0.0)
    third = max(float(np.dot(lm[33] - brow, d)), 0.0)
    b = h_brow + FOREHEAD_RATIO * third
    t = np.linspace(0.0, np.pi, FOREHEAD_ARC_POINTS)[1:-1]
    arc = c + np.cos(t)[:, None] * ((p16 - p0) / 2) - np.sin(t)[:, None] * (b * d)
    polys["skin"] = [np.concatenate([lm[0:17], arc])]

    # brows: bands around the marked upper edges (inner end first for the taper)
    for name, idx in (("right_brow", list(range(21, 16, -1))), ("left_brow", list(range(22, 27)))):
        pts = lm[idx]
        k = np.asarray(BROW_TAPER)[:, None]
        upper = pts - BROW_ABOVE * iod * k * d
        lower = pts + BROW_BELOW * iod * k * d
        polys[name] = [np.concatenate([upper, lower[::-1]])]

    polys["right_eye"] = [lm[36:42]]
    polys["left_eye"] = [lm[42:48]]

    # nose: bridge sides, alae at the tip's height, lower outline 31-35
    w = np.asarray(NOSE_HALF_WIDTH)[:, None] * iod
    ala = 0.5 * float(np.linalg.norm(lm[35] - lm[31]))
    right_side = np.concatenate([lm[27:30] - w * u, [lm[30] - ala * u]])  # image left (subject's right)
    left_side = np.concatenate([lm[27:30] + w * u, [lm[30] + ala * u]])
    polys["nose"] = [np.concatenate([right_side, lm[31:36], left_side[::-1]])]

    polys["upper_lip"] = [np.concatenate([lm[48:55], lm[[64, 63, 62, 61, 60]]])]
    polys["lower_lip"] = [np.concatenate([lm[54:60], lm[[48, 60, 67, 66, 65, 64]]])]
    inner = lm[60:68]
    x, y = inner[:, 0], inner[:, 1]
    area = 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))
    polys["inner_mouth"] = [inner] if area >= 1.0 else []
    return polys


def render_landmarks68(lm68, size: int) -> np.ndarray:
    """Label masks [N,S,S] uint8 (``LABELS``) from 68 landmarks [N,68,2|3] in crop pixels."""
    import cv2

    lm68 = np.asarray(lm68, np.float64).reshape(-1, 68, np.shape(lm68)[-1])[:, :, :2]
    S = int(size)
    out = np.zeros((len(lm68), S, S), np.uint8)
    scale = float(1 << SHIFT)
    for k, lm in enumerate(lm68):
        if not np.isfinite(lm).all():
            continue
        polys = region_polygons(lm)
        for name in DRAW_ORDER:
            for p in polys[name]:
                q = np.round(p * scale).astype(np.int64)
                if np.abs(q).max() > (1 << 28):  # far outside the crop: nothing to draw, avoid overflow
                    q = np.clip(q, -(1 << 28), 1 << 28)
                cv2.fillPoly(out[k], [q.astype(np.int32).reshape(-1, 1, 2)], int(L[name]), cv2.LINE_8, SHIFT)
    return out


def crop_points(affine_crop2img, size: int) -> np.ndarray:
    """Image positions [N,S,S,2] float64 (x, y) of the crop pixel centres, from ``faces/affine``."""
    S = int(size)
    v, u = np.mgrid[0:S, 0:S].astype(np.float64)
    grid = np.stack([u, v], -1).reshape(1, -1, 2)
    M = np.asarray(affine_crop2img, np.float64).reshape(-1, 2, 3)
    return align.transform_points(M, np.broadcast_to(grid, (len(M), S * S, 2))).reshape(len(M), S, S, 2)


class Landmarks68Parser:
    """Region masks drawn from the 68 landmarks (no model file)."""

    name = "landmarks68"
    labels = LABELS
    needs_image = False

    @property
    def params(self) -> dict:
        return {"parser": self.name, "weights_sha256": None, "labels": list(LABELS), "draw_order": list(DRAW_ORDER),
                "subpixel_bits": SHIFT, "forehead_ratio": FOREHEAD_RATIO, "brow_above_iod": BROW_ABOVE,
                "brow_below_iod": BROW_BELOW, "brow_taper": list(BROW_TAPER),
                "nose_half_width_iod": list(NOSE_HALF_WIDTH), "forehead_arc_points": FOREHEAD_ARC_POINTS}

    def parse(self, lm_crop, size: int, **_) -> np.ndarray:
        return render_landmarks68(lm_crop, size)


_CACHE: dict[tuple, object] = {}


def load_parser(name: str, weights: dict | None = None, device: str = "cpu"):
    """The parser backend ``name`` (loaded once per process)."""
    if name not in PARSERS:
        raise zoo.ModelError(f"unknown parser {name!r} (available: {', '.join(PARSERS)})")
    if name == "landmarks68":
        return Landmarks68Parser()
    from . import farl

    resolved = zoo.resolve(name, weights)
    key = (name, str(resolved.path), resolved.sha256, device)
    if key not in _CACHE:
        _CACHE[key] = farl.FarlParser(resolved, device=device)
    return _CACHE[key]


# ----------------------------------------------------------------------------- palette PNG files

def write_palette_png(path, mask: np.ndarray, colours: np.ndarray) -> None:
    """Write ``mask`` [H,W] uint8 as an 8-bit palette PNG (pixel value = label, colours = PLTE),
    atomically. Plain zlib; any PNG reader gives the labels back (PIL mode "P")."""
    import os
    import struct
    import zlib
    from pathlib import Path

    mask = np.ascontiguousarray(mask, np.uint8)
    h, w = mask.shape

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    pal = np.zeros((max(int(mask.max()) + 1, len(colours)), 3), np.uint8)
    pal[: len(colours)] = colours
    raw = np.concatenate([np.zeros((h, 1), np.uint8), mask], axis=1).tobytes()  # filter type 0 per row
    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 3, 0, 0, 0))
           + chunk(b"PLTE", pal.tobytes()) + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b""))
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(png)
    os.replace(tmp, path)


# ----------------------------------------------------------------------------- the stage

def _crop_params(config) -> dict:
    from .crop import _template_params

    return _template_params(config)


@stages.register
class ParseStage(stages.Stage):
    """``parse``: ``faces/parsing`` [N,S,S] uint8 label masks in each face's aligned crop."""

    name = "parse"
    consumes = "frames"
    requires = ("align",)
    outputs = ("faces/parsing",)

    def __init__(self, config):
        super().__init__(config)
        if config.masks and not config.images:
            raise stages.StageError("--masks writes next to the crop images: give --images DIR")
        from .. import device as device_mod

        dev = device_mod.torch_device(config) if config.parser != "landmarks68" else "cpu"
        self.model = load_parser(config.parser, config.weights, dev)
        self.on_gpu = dev != "cpu"
        self.labels = list(self.model.labels)
        if len(self.labels) > 256:  # pragma: no cover - registry models have <= 19
            raise stages.StageError(f"parser {config.parser}: {len(self.labels)} labels do not fit uint8")

    @property
    def params(self) -> dict:
        from pathlib import Path

        c = self.config
        return {**self.model.params, "crop": _crop_params(c),
                "masks": str(Path(c.images).resolve()) if (c.masks and c.images) else None}

    def begin(self, writer, info) -> None:
        s = _crop_params(self.config)["size"]
        self._size = s
        p = self.params
        writer.create("faces/parsing", (s, s), "u1", compression="gzip", chunk_rows=MASK_CHUNK, attrs={
            "labels": self.labels, "model": self.model.name, "weights_sha256": p.get("weights_sha256"),
            "model_labels": getattr(self.model, "model_labels", None),
            "params": p, "frame": "aligned crop (faces/affine maps crop -> image)",
            "sides": "left/right are the subject's (left_eye: image right of a frontal unmirrored face)"})
        self._dir = None
        if self.config.masks and self.config.images:
            from ..inputs import safe_key
            from pathlib import Path

            root = Path(self.config.images).resolve()
            self._dir = (root / safe_key(writer.key)).resolve()
            if root not in self._dir.parents:
                raise stages.StageError(f"{writer.key}: mask directory would escape {root}")
            self._colours = palette(self.labels)

    def on_frames(self, batch, row0: int, writer) -> None:
        from ..media import to_processed

        f = batch.faces
        n = len(f["frame"])
        S = self._size
        if n == 0:
            masks = np.zeros((0, S, S), np.uint8)
        else:
            aff = f["affine"].astype(np.float64)
            if self.model.needs_image:
                pts = to_processed(crop_points(aff, S), batch.scale)
                masks = self.model.parse_batch(batch.rgb, f["frame"] - row0,
                                               to_processed(f["kps5"].astype(np.float64), batch.scale), pts)
            else:
                img2crop = align.invert_affine(aff)
                lm_crop = align.transform_points(img2crop, f["landmarks"][:, :, :2].astype(np.float64))
                masks = self.model.parse(lm_crop, S)
        f["parsing"] = masks
        self.write_faces(writer, batch)
        if self._dir is not None and n:
            from .crop import crop_image_paths

            for k, path in enumerate(crop_image_paths(self._dir, f, "png", suffix="_mask")):
                path.parent.mkdir(parents=True, exist_ok=True)
                write_palette_png(path, masks[k], self._colours)
