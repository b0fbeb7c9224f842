"""FAN landmarks (Bulat & Tzimiropoulos, 2017) through the ``face-alignment`` package's own network
and pre/post-processing, batched over all faces of a frame batch.

``fan2d`` (68 points, 2D) and ``fan3d`` (68 points with depth, plus the ``fan-depth`` network) are
download-on-demand models: ``facekit models pull fan2d`` on a machine with internet, or
``--weights fan2d=PATH``. They need PyTorch and face-alignment::

    pip install torch
    pip install --no-deps face-alignment   # its `opencv-python` requirement would replace the
                                           # headless OpenCV facekit uses (and needs libGL)

What is reproduced exactly from ``face_alignment.FaceAlignment.get_landmarks_from_image``: the
crop (``utils.crop``, 256 x 256, centre = box centre moved up by ``CENTER_Y_OFFSET`` x box height,
scale = (box width + box height) / ``YUNET_REFERENCE_SCALE``: face-alignment's own constant for
YuNet boxes, the detector facekit uses), RGB/255 input, the last hourglass's heatmaps, arg-max +
quarter-pixel refinement and back-projection (``utils.get_preds_fromhm``), and for 3D the depth
network on the crop plus Gaussian heatmaps. What differs: faces of many frames go through the
network in one batch (``max_batch`` faces), and no horizontal-flip test-time augmentation
(``flip_input=False``). ``tests/test_fan.py`` checks equality with the reference on random weights.
Per-point confidence = the heatmap maximum, stored as ``faces/landmarks_score``.
"""

from __future__ import annotations

import numpy as np

from .. import zoo

YUNET_REFERENCE_SCALE = 165.0  # face_alignment.detection.yunet: box (w + h) / this = FAN scale
MAX_BATCH = 32  # faces per forward pass


def _imports():
    try:
        import torch
        from face_alignment import utils as fa_utils
        from face_alignment.models import FAN, ResNetDepth
    except ImportError as e:
        raise zoo.ModelError(
            f"the FAN landmark backends need PyTorch and face-alignment ({e}): "
            "pip install torch && pip install --no-deps face-alignment") from None
    return torch, fa_utils, FAN, ResNetDepth


def _load_state(torch, path, name: str = "fan") -> dict:
    """The state dict of a checkpoint, loaded with ``weights_only=True``: a file that pickles
    anything but tensors and plain containers (which could run code when unpickled) is refused
    with a ModelError, as is a file that is not a checkpoint at all."""
    import pickle

    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)  # never unpickles code
    except pickle.UnpicklingError as e:
        # torch's message: a preamble (suggesting to turn the safe mode off), then the reason
        parts = str(e).split("\n\n")
        why = " ".join((parts[1] if len(parts) > 1 else parts[0]).split())[:200]
        if "global" not in why.lower():  # not a pickle of objects at all (garbage, truncated)
            raise zoo.ModelError(f"model {name}: {path} is not a readable PyTorch checkpoint ({why})") from None
        raise zoo.ModelError(
            f"model {name}: {path} is refused: it pickles objects other than tensors, which could run code "
            f"when loaded ({why}); use a plain state-dict checkpoint") from None
    except Exception as e:  # noqa: BLE001 - truncated file, not a torch checkpoint...
        raise zoo.ModelError(f"model {name}: {path} is not a readable PyTorch checkpoint "
                             f"({type(e).__name__}: {' '.join(str(e).split())[:200]})") from None
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise zoo.ModelError(f"model {name}: {path} does not hold a state dict")
    return {k.replace("module.", "", 1): v for k, v in state.items()}


class Fan:
    """FAN-4 landmark network; ``dims`` 2 (``fan2d``) or 3 (``fan3d`` + ``fan-depth``)."""

    n_points = 68
    scheme = "ibug68"

    def __init__(self, weights: zoo.Resolved, depth_weights: zoo.Resolved | None = None, device: str = "cpu",
                 max_batch: int = MAX_BATCH):
        torch, self._u, FAN, ResNetDepth = _imports()
        self._torch = torch
        self.weights = weights
        self.name = weights.model
        self.dims = 3 if depth_weights is not None else 2
        self.device = device
        self.max_batch = max_batch
        self.net = FAN(4)
        self.net.load_state_dict(_load_state(torch, weights.path, weights.model))
        self.net.to(device).eval()
        self.depth = None
        if depth_weights is not None:
            self.depth_weights = depth_weights
            self.depth = ResNetDepth()
            self.depth.load_state_dict(_load_state(torch, depth_weights.path, depth_weights.model))
            self.depth.to(device).eval()

    def _exact(self):
        """On CUDA: full float32 convolutions. cuDNN's TF32 (PyTorch's default for convolutions on
        Ampere and later) rounds inputs to 10 mantissa bits: heatmaps then differ from the CPU's by
        ~1e-2 and some arg-maxes jump (bench/RESULTS-gpu.md); without it they agree to ~1e-5.
        Under facekit.device's process-wide cuDNN lock (the detector runs in another thread)."""
        from ..device import cudnn_mode

        return cudnn_mode(self.device, exact=True)

    def _centre_scale(self, box):
        u = self._u
        centre = np.array([box[2] - (box[2] - box[0]) / 2.0, box[3] - (box[3] - box[1]) / 2.0])
        centre[1] = centre[1] - (box[3] - box[1]) * u.CENTER_Y_OFFSET
        scale = (box[2] - box[0] + box[3] - box[1]) / YUNET_REFERENCE_SCALE
        return centre, scale

    def predict_batch(self, images, frame_idx, boxes_xyxy) -> tuple[np.ndarray, np.ndarray]:
        """Landmarks for K faces of a batch of images in one (chunked) forward pass.

        images: uint8 RGB [B,H,W,3]; frame_idx: [K] index into images; boxes_xyxy: [K,4] pixels.
        Returns landmarks [K,68,dims] float32 (pixels; depth in the same units) and per-point
        scores [K,68] float32 (heatmap maxima).
        """
        torch, u = self._torch, self._u
        k = len(boxes_xyxy)
        if k == 0:
            return np.zeros((0, 68, self.dims), np.float32), np.zeros((0, 68), np.float32)
        centres, scales, crops = [], [], []
        for i, box in zip(frame_idx, boxes_xyxy):
            c, s = self._centre_scale(np.asarray(box, np.float64))
            centres.append(c)
            scales.append(s)
            crops.append(u.crop(images[i], c, s).transpose((2, 0, 1)).astype(np.float32) / 255.0)
        inp = torch.from_numpy(np.stack(crops))
        heat = []
        with torch.no_grad(), self._exact():
            for a in range(0, k, self.max_batch):
                out = self.net(inp[a:a + self.max_batch].to(self.device))
                heat.append((out[-1] if isinstance(out, list) else out).float().cpu())
        heat = torch.cat(heat).numpy()
        lms = np.zeros((k, 68, self.dims), np.float32)
        scores = np.zeros((k, 68), np.float32)
        pts_hm = []
        for j in range(k):
            pts, pts_img, sc = u.get_preds_fromhm(heat[j:j + 1], centres[j], scales[j])
            lms[j, :, :2] = pts_img.reshape(68, 2)
            scores[j] = sc.reshape(68)
            pts_hm.append(pts.reshape(68, 2) * 4)
        if self.depth is not None:
            maps = np.zeros((k, 68, u.CROP_RESOLUTION, u.CROP_RESOLUTION), np.float32)
            for j in range(k):
                for p in range(68):
                    if pts_hm[j][p, 0] > 0 and pts_hm[j][p, 1] > 0:
                        maps[j, p] = u.draw_gaussian(maps[j, p], torch.from_numpy(pts_hm[j][p]), 2)
            depth_in = torch.cat([inp, torch.from_numpy(maps)], 1)
            with torch.no_grad(), self._exact():
                d = torch.cat([self.depth(depth_in[a:a + self.max_batch].to(self.device)).float().cpu()
                               for a in range(0, k, self.max_batch)]).numpy().reshape(k, 68)
            lms[:, :, 2] = d * (1.0 / (u.CROP_RESOLUTION / (u.SCALE_FACTOR * np.asarray(scales)[:, None])))
        return lms, scores

    def predict(self, rgb, boxes_xyxy, kps5=None):
        """One image: landmarks [n,68,dims] and scores [n,68] (``kps5`` is not used by FAN)."""
        return self.predict_batch(rgb[None], np.zeros(len(boxes_xyxy), int), boxes_xyxy)


def load(name: str, weights: dict | None = None, device: str = "cpu") -> Fan:
    """``fan2d`` or ``fan3d`` (which also resolves ``fan-depth``)."""
    _imports()
    main = zoo.resolve(name, weights)
    depth = zoo.resolve("fan-depth", weights) if name == "fan3d" else None
    return Fan(main, depth, device=device)
