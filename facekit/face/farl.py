"""FaRL face parsers (``farl-lapa``, ``farl-celebm``): pyfacer's TorchScript models with pyfacer's
own pre- and post-processing, evaluated at the pixels of facekit's aligned crops.

Download on demand (``facekit models pull farl-lapa`` on a machine with internet, or
``--weights farl-lapa=PATH``); needs PyTorch (``pip install torch``), not pyfacer.

Reproduced exactly from pyfacer 0.0.5 (``facer/face_parsing/farl.py``, ``facer/transform.py``):

* input: the frame as float RGB in [0, 1] (``uint8 / 255``); the model normalises internally;
* alignment from the five detector key points (pyfacer's ``points``: image-left eye first, as
  facekit's ``kps5``) to a 448 x 448 input: ``farl-lapa`` = similarity onto pyfacer's standard
  five points (``get_face_align_matrix``, face scale 1.0) followed by a tanh warp with
  ``warp_factor`` 0.8 (``make_tanh_warp_grid``); ``farl-celebm`` = the FFHQ-like quad of
  ``get_face_align_matrix_celebm`` mapped onto the 448 square, no warp (factor 0);
* ``grid_sample`` (bilinear, ``align_corners=False``, zero padding) into the model, which returns
  ``(logits [B,C,448,448], _)``;
* back to the image: pyfacer samples the logits (bilinear, ``align_corners=False``) at every image
  pixel through the forward warp (``make_inverted_tanh_warp_grid``) and takes softmax/argmax.

What differs: pyfacer evaluates that inverse warp at every pixel of the whole frame (C x H x W
floats per face); facekit evaluates the very same function only at the centres of the face's crop
pixels (``faces/affine``), so ``faces/parsing`` is in crop coordinates like every facekit mask.
Where a crop pixel centre is an image pixel centre the logits equal pyfacer's (tests/test_parse.py
proves it with a random TorchScript model of the same signature). Coordinates: pyfacer puts pixel
centres at ``i + 0.5``; facekit at ``i``, so points are shifted by 0.5 on the way in.

Labels: pyfacer's names renamed to facekit's words (``MODEL_LABELS`` keeps pyfacer's, stored as
the attribute ``model_labels``). Their left/right follow pyfacer's ``r``/``l`` names ("rb" ->
right_brow), which facekit documents as the subject's sides; without the weights (offline) this
was not checked on real faces.
"""

from __future__ import annotations

import numpy as np

from .. import zoo

SIZE = 448  # pixels, the models' input side
MAX_BATCH = 8  # faces per forward pass (448 x 448 inputs)
#: pyfacer's standard five points on a 512 canvas, normalised to [-1, 1] (transform._standard_face_pts)
STANDARD_FACE_PTS = ((196.0, 226.0), (316.0, 226.0), (256.0, 286.0), (220.0, 360.4), (292.0, 360.4))
#: pyfacer pretrain_settings: alignment kind, tanh warp factor, its label names, facekit's label names
SETTINGS = {
    "farl-lapa": {
        "conf": "lapa/448", "align": "points", "warp_factor": 0.8, "face_scale": 1.0,
        "model_labels": ["background", "face", "rb", "lb", "re", "le", "nose", "ulip", "imouth", "llip", "hair"],
        "labels": ["background", "skin", "right_brow", "left_brow", "right_eye", "left_eye", "nose",
                   "upper_lip", "inner_mouth", "lower_lip", "hair"],
    },
    "farl-celebm": {
        "conf": "celebm/448", "align": "celebm_quad", "warp_factor": 0.0, "face_scale": None,
        "model_labels": ["background", "neck", "face", "cloth", "rr", "lr", "rb", "lb", "re", "le", "nose",
                         "imouth", "llip", "ulip", "hair", "eyeg", "hat", "earr", "neck_l"],
        "labels": ["background", "neck", "skin", "cloth", "right_ear", "left_ear", "right_brow", "left_brow",
                   "right_eye", "left_eye", "nose", "inner_mouth", "lower_lip", "upper_lip", "hair",
                   "eyeglasses", "hat", "earring", "necklace"],
    },
}


def _torch():
    try:
        import torch
        import torch.nn.functional as F
    except ImportError as e:
        raise zoo.ModelError(f"the FaRL parsers need PyTorch ({e}): pip install torch") from None
    return torch, F


# ---------------------------------------------------------------- pyfacer's geometry, in torch float32

def similarity_matrix(from_pts, to_pts):
    """pyfacer ``get_similarity_transform_matrix``: [b,n,2] -> [b,3,3] (from -> to)."""
    torch, _ = _torch()
    mfrom = from_pts.mean(dim=1, keepdim=True)
    mto = to_pts.mean(dim=1, keepdim=True)
    a1 = (from_pts - mfrom).square().sum([1, 2], keepdim=False)
    c1 = ((to_pts - mto) * (from_pts - mfrom)).sum([1, 2], keepdim=False)
    to_delta = to_pts - mto
    from_delta = from_pts - mfrom
    c2 = (to_delta[:, :, 0] * from_delta[:, :, 1] - to_delta[:, :, 1] * from_delta[:, :, 0]).sum([1], keepdim=False)
    a = c1 / a1
    b = c2 / a1
    dx = mto[:, 0, 0] - a * mfrom[:, 0, 0] - b * mfrom[:, 0, 1]
    dy = mto[:, 0, 1] + b * mfrom[:, 0, 0] - a * mfrom[:, 0, 1]
    ones, zeros = torch.ones_like(a1), torch.zeros_like(a1)
    return torch.stack([a, b, dx, -b, a, dy, zeros, zeros, ones], dim=-1).reshape(-1, 3, 3)


def align_matrix_points(face_pts, size: int = SIZE, face_scale: float = 1.0):
    """pyfacer ``get_face_align_matrix`` (target = its standard points scaled to ``size``)."""
    torch, _ = _torch()
    std = torch.tensor(STANDARD_FACE_PTS, dtype=torch.float32).reshape(-1) / 256.0 - 1.0
    std = std.reshape(5, 2).to(face_pts)
    target = (std * face_scale + 1) * torch.tensor([size - 1, size - 1]).to(face_pts) / 2.0
    return similarity_matrix(face_pts, target.unsqueeze(0).broadcast_to(face_pts.shape))


def _quad(lm: np.ndarray) -> np.ndarray:
    """pyfacer ``get_quad`` (numpy float32 as there): the FFHQ quad of five points, corners ordered
    top-left, top-right, bottom-right, bottom-left."""
    def rot90(v):
        return np.array([-v[1], v[0]])

    eye_avg = (lm[0] + lm[1]) * 0.5 + 0.5
    mouth_avg = (lm[3] + lm[4]) * 0.5 + 0.5
    eye_to_eye = lm[1] - lm[0]
    eye_to_mouth = mouth_avg - eye_avg
    x = eye_to_eye - rot90(eye_to_mouth)
    x /= np.hypot(*x)
    x *= max(np.hypot(*eye_to_eye) * 2.0, np.hypot(*eye_to_mouth) * 1.8)
    y = rot90(x)
    c = eye_avg + eye_to_mouth * 0.1
    quad = np.stack([c - x - y, c - x + y, c + x + y, c + x - y])
    return quad[[0, 3, 2, 1]]


def align_matrix_celebm(face_pts, size: int = SIZE):
    """pyfacer ``get_face_align_matrix_celebm``: the quad onto the ``size`` square."""
    torch, _ = _torch()
    quads = torch.stack([torch.from_numpy(_quad(p.detach().cpu().numpy())).float() for p in face_pts], 0).to(face_pts)
    target = torch.as_tensor([[0, 0], [size, 0], [size, size], [0, size]]).to(quads).unsqueeze(0)
    return similarity_matrix(quads, target.broadcast_to(quads.shape))


def _safe_arctanh(x, eps: float = 0.001):
    torch, _ = _torch()
    return torch.clamp(x, -1 + eps, 1 - eps).arctanh()


def inverted_tanh_warp(coords, matrix, warp_factor: float, warped_shape):
    """pyfacer ``inverted_tanh_warp_transform``: warped coords [b,n,2] -> original image coords."""
    torch, _ = _torch()
    h, w = warped_shape[:2]
    w_h = torch.tensor([[w, h]]).to(coords)
    if warp_factor > 0:
        coords = coords / w_h * 2 - 1
        p1 = coords > 1.0 - warp_factor
        p2 = coords < -1.0 + warp_factor
        r1 = _safe_arctanh((coords - 1.0 + warp_factor) / warp_factor) * warp_factor + 1.0 - warp_factor
        r2 = _safe_arctanh((coords + 1.0 - warp_factor) / warp_factor) * warp_factor - 1.0 + warp_factor
        coords = torch.where(p1, r1, torch.where(p2, r2, coords))
        coords = (coords + 1) / 2 * w_h
    homo = torch.cat([coords, torch.ones_like(coords[:, :, [0]])], dim=-1)
    homo = torch.bmm(homo, torch.linalg.inv(matrix).permute(0, 2, 1))
    return homo[:, :, :2] / homo[:, :, [2, 2]]


def tanh_warp(coords, matrix, warp_factor: float, warped_shape):
    """pyfacer ``tanh_warp_transform``: original image coords [b,n,2] -> warped (model) coords."""
    torch, _ = _torch()
    h, w = warped_shape[:2]
    w_h = torch.tensor([[w, h]]).to(coords)
    homo = torch.cat([coords, torch.ones_like(coords[:, :, [0]])], dim=-1)
    homo = torch.bmm(homo, matrix.transpose(2, 1))
    coords = homo[:, :, :2] / homo[:, :, [2, 2]]
    if warp_factor > 0:
        coords = coords / w_h * 2 - 1
        p1 = coords > 1.0 - warp_factor
        p2 = coords < -1.0 + warp_factor
        r1 = torch.tanh((coords - 1.0 + warp_factor) / warp_factor) * warp_factor + 1.0 - warp_factor
        r2 = torch.tanh((coords + 1.0 - warp_factor) / warp_factor) * warp_factor - 1.0 + warp_factor
        coords = torch.where(p1, r1, torch.where(p2, r2, coords))
        coords = (coords + 1) / 2 * w_h
    return coords


def input_grid(matrix, warp_factor: float, orig_hw, size: int = SIZE):
    """pyfacer ``make_tanh_warp_grid``: [b,size,size,2] normalised image positions of the model input."""
    torch, _ = _torch()
    b = matrix.size(0)
    yy, xx = torch.meshgrid(torch.arange(size).float(), torch.arange(size).float(), indexing="ij")
    yy, xx = yy + 0.5, xx + 0.5
    yy = yy.unsqueeze(0).broadcast_to(b, size, size).to(matrix.device)
    xx = xx.unsqueeze(0).broadcast_to(b, size, size).to(matrix.device)
    pts = torch.stack([xx, yy], dim=-1).reshape([b, size * size, 2])
    out = inverted_tanh_warp(pts, matrix, warp_factor, (size, size)).reshape(b, size, size, 2)
    oh, ow = orig_hw
    return out / torch.tensor([ow, oh]).to(matrix).reshape(1, 1, 1, 2) * 2 - 1


def output_grid(matrix, warp_factor: float, pts_corner, size: int = SIZE):
    """Normalised model-output positions of image points ``pts_corner`` [b,...,2] (pyfacer's pixel
    convention, centres at i + 0.5): pyfacer's ``make_inverted_tanh_warp_grid`` at those points."""
    torch, _ = _torch()
    shape = pts_corner.shape
    flat = pts_corner.reshape(shape[0], -1, 2)
    out = tanh_warp(flat, matrix, warp_factor, (size, size)).reshape(shape)
    return out / torch.tensor([size, size]).to(matrix).reshape(*([1] * (len(shape) - 1)), 2) * 2 - 1


# ---------------------------------------------------------------- the backend

class FarlParser:
    """A FaRL TorchScript parser; ``parse_batch`` gives label masks at given image positions."""

    needs_image = True

    def __init__(self, weights: zoo.Resolved, device: str = "cpu", max_batch: int = MAX_BATCH):
        torch, _ = _torch()
        if weights.model not in SETTINGS:
            raise zoo.ModelError(f"unknown FaRL parser {weights.model!r}")
        self.name = weights.model
        self.weights = weights
        self.setting = SETTINGS[self.name]
        self.labels = list(self.setting["labels"])
        self.model_labels = list(self.setting["model_labels"])
        self.device = device
        self.max_batch = max_batch
        try:
            self.net = torch.jit.load(str(weights.path), map_location=device)
        except Exception as e:  # noqa: BLE001 - not a TorchScript archive, truncated...
            raise zoo.ModelError(f"model {self.name}: {weights.path} is not a loadable TorchScript file "
                                 f"({type(e).__name__}: {' '.join(str(e).split())[:200]})") from None
        self.net.eval()

    @property
    def params(self) -> dict:
        s = self.setting
        return {"parser": self.name, "weights_sha256": self.weights.sha256, "pyfacer_conf": s["conf"],
                "input_size": SIZE, "align": s["align"], "face_scale": s["face_scale"],
                "warp_factor": s["warp_factor"], "input_range": "RGB float [0, 1]",
                "interpolation": "bilinear, align_corners=False, zero padding", "labels": self.labels,
                "model_labels": self.model_labels}

    def matrix(self, pts_corner):
        s = self.setting
        if s["align"] == "points":
            return align_matrix_points(pts_corner, SIZE, s["face_scale"])
        return align_matrix_celebm(pts_corner, SIZE)

    def logits_at(self, images, frame_idx, kps5, points) -> np.ndarray:
        """Logits [K,C,...] float32 of K faces sampled at image positions ``points`` [K,...,2].

        images: [B,H,W,3] uint8 RGB; frame_idx: [K] index into images; kps5: [K,5,2] key points;
        points and kps5 in pixels with centres at integers (facekit's convention).
        """
        torch, F = _torch()
        images = np.asarray(images)
        frame_idx = np.asarray(frame_idx, np.int64)
        k = len(frame_idx)
        h, w = images.shape[1:3]
        out = None
        wf = self.setting["warp_factor"]
        from ..device import cudnn_mode

        with torch.inference_mode(), cudnn_mode(self.device, exact=False):
            for a in range(0, k, self.max_batch):
                sel = slice(a, a + self.max_batch)
                imgs = torch.from_numpy(np.ascontiguousarray(images[frame_idx[sel]])).permute(0, 3, 1, 2)
                imgs = (imgs.float() / 255.0).to(self.device)
                kp = torch.from_numpy(np.asarray(kps5[sel], np.float64) + 0.5).float().to(self.device)
                m = self.matrix(kp)
                w_images = F.grid_sample(imgs, input_grid(m, wf, (h, w)), mode="bilinear", align_corners=False)
                w_logits = self.net(w_images)[0]
                p = torch.from_numpy(np.asarray(points[sel], np.float64) + 0.5).float().to(self.device)
                g = output_grid(m, wf, p)
                g2 = g.reshape(g.shape[0], -1, 1, 2) if g.ndim != 4 else g
                lg = F.grid_sample(w_logits, g2, mode="bilinear", align_corners=False)
                lg = lg.reshape(lg.shape[0], lg.shape[1], *g.shape[1:-1]).float().cpu().numpy()
                if out is None:
                    out = np.zeros((k, lg.shape[1], *lg.shape[2:]), np.float32)
                out[sel] = lg
        if out is None:
            return np.zeros((0, len(self.labels), *np.shape(points)[1:-1]), np.float32)
        return out

    def parse_batch(self, images, frame_idx, kps5, points) -> np.ndarray:
        """Label masks [K,...] uint8: argmax of the softmax of ``logits_at`` (pyfacer's prediction).
        Faces with non-finite key points get all-background masks."""
        kps5 = np.asarray(kps5, np.float64)
        points = np.asarray(points, np.float64)
        masks = np.zeros((len(kps5), *points.shape[1:-1]), np.uint8)
        ok = np.isfinite(kps5).all(axis=(1, 2)) & np.isfinite(points.reshape(len(points), -1)).all(axis=1)
        if ok.any():
            lg = self.logits_at(images, np.asarray(frame_idx)[ok], kps5[ok], points[ok])
            if lg.shape[1] != len(self.labels):
                raise zoo.ModelError(f"model {self.name}: {lg.shape[1]} output classes, expected {len(self.labels)}")
            masks[ok] = lg.argmax(axis=1).astype(np.uint8)
        return masks
