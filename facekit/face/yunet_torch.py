"""YuNet in PyTorch: the same float32 graph as ``yunet.YuNet`` (``yunet.fp32_graph``), run by
``onnx_torch.OnnxModule``, so that ``--device cuda`` detects on the GPU (the onnxruntime we get
on GPU machines is CPU-only).

On the device: the uint8 RGB frames are uploaded as they are (a quarter of the bytes of float
input), padded (bottom, right; to a multiple of 32 and at least ``yunet.MIN_SIDE``), turned into
BGR float 0..255, run in float32 (TF32 off on CUDA, as ``fan.Fan``: it would move the outputs by
~1e-3), scored (sqrt(cls * obj)) and thresholded. Only the candidate rows (cells scoring at least
the threshold: a few per face) are copied back; the box arithmetic, ``yunet.nms`` and the result
layout are ``yunet.decode``'s, in NumPy, so the detections equal ``YuNet``'s within float32
convolution noise (tests/test_yunet_torch.py: 1e-3 px).
"""

from __future__ import annotations

import numpy as np

from .. import device as device_mod
from .. import zoo
from .yunet import (BATCH_PIXELS, MIN_SIDE, MODEL_NAME, OUTPUTS, STRIDES, _padded, _pad_min, _to_results,
                    cell_faces, fp32_graph, suppress)

#: padded input pixels per forward pass on a GPU: 32 frames of 1080p (1088 x 1920 padded; about
#: 2 GiB of live float32 activations, from the tensor sizes: 64 MiB a frame); the CPU uses
#: yunet.BATCH_PIXELS (8 frames of 640 x 384)
GPU_BATCH_PIXELS = 32 * 1088 * 1920


class YuNetTorch:
    """YuNet on a PyTorch device (``"cuda:N"`` or ``"cpu"``); the interface of ``yunet.YuNet``.

    ``detect(rgb)`` one image; ``detect_batch(frames)`` a list of RGB uint8 images (same-size runs
    share forward passes) or a uint8 tensor [B, H, W, 3] (e.g. frames already on the GPU).
    ``score_threshold``, ``nms_threshold``: as ``YuNet``; ``device``: ``"cpu"``, ``"cuda"`` or
    ``"cuda:N"`` (DeviceError when PyTorch cannot use it); ``batch_pixels``: padded pixels per
    forward pass; ``channels_last``: NHWC activations (None: on the CPU only). Thread-safe."""

    name = MODEL_NAME
    runtime = "torch"

    def __init__(self, weights: zoo.Resolved, score_threshold: float = 0.8, nms_threshold: float = 0.3,
                 device: str = "cuda:0", batch_pixels: int | None = None, channels_last: bool | None = None):
        try:
            import torch

            from .onnx_torch import OnnxModule, UnsupportedOnnx
        except ImportError as e:
            raise zoo.ModelError(f"model yunet: the PyTorch runtime needs torch and onnx ({e}): "
                                 f"pip install torch onnx") from None
        self._torch = torch
        self.device = device_mod.torch_device_of(device)  # DeviceError (one line) if unusable
        self.weights = weights
        self.score_threshold = float(score_threshold)
        self.nms_threshold = float(nms_threshold)
        self.batch_pixels = int(batch_pixels or (GPU_BATCH_PIXELS if self.device != "cpu" else BATCH_PIXELS))
        try:
            graph = fp32_graph(weights.path)
        except Exception as e:  # noqa: BLE001 - a broken or foreign file: one line
            raise zoo.ModelError(f"model yunet: cannot read {weights.path} as a YuNet ONNX graph: "
                                 f"{' '.join(str(e).split())[:300]}") from None
        try:
            net = OnnxModule(graph)
        except UnsupportedOnnx as e:
            raise zoo.ModelError(f"model yunet: {weights.path}: {e}") from None
        if sorted(net.output_names) != sorted(OUTPUTS):
            raise zoo.ModelError(f"model yunet: {weights.path} has outputs {net.output_names}, "
                                 f"not YuNet's {list(OUTPUTS)}")
        #: NHWC activations: 1.7x faster on the CPU (oneDNN: ~155 vs ~270 ms a 720p frame, 2 cores,
        #: interleaved runs); None = on the CPU only (CUDA: bench/gpu_detect.py --channels-last yes)
        self.channels_last = (self.device == "cpu") if channels_last is None else bool(channels_last)
        net = net.to(self.device).eval()
        self.net = net.to(memory_format=torch.channels_last) if self.channels_last else net

    def _exact(self):
        """Full float32 convolutions on CUDA (cuDNN's TF32 rounds inputs to 10 mantissa bits),
        under facekit.device's process-wide cuDNN lock (this runs in a background thread)."""
        return device_mod.cudnn_mode(self.device, exact=True)

    def detect(self, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Detect faces in one RGB uint8 image [H, W, 3].

        Returns boxes_xyxy [n,4] float32, scores [n] float32, kps5 [n,5,2] float32 (pixels)."""
        return self.detect_batch([rgb])[0]

    def detect_batch(self, frames) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """``detect`` for each image of ``frames``: a list of RGB uint8 arrays [H, W, 3] (any sizes;
        one forward pass per run of consecutive same-size images, at most ``batch_pixels`` padded
        pixels), a uint8 array [B, H, W, 3], or a uint8 tensor [B, H, W, 3] on any device (moved to
        this one)."""
        torch = self._torch
        if isinstance(frames, np.ndarray) and frames.ndim == 4:  # a batch array: uploaded as it is, no stacking copy
            frames = torch.from_numpy(np.ascontiguousarray(frames))
        if isinstance(frames, torch.Tensor):
            x = frames.to(self.device)
            if x.dtype != torch.uint8 or x.ndim != 4 or x.shape[3] != 3:
                raise ValueError(f"expected a uint8 tensor [B, H, W, 3], got {x.dtype} {list(x.shape)}")
            h, w = x.shape[1:3]
            if h < MIN_SIDE or w < MIN_SIDE:  # as yunet._pad_min: bottom/right, coordinates unchanged
                x = torch.nn.functional.pad(x, (0, 0, 0, max(0, MIN_SIDE - w), 0, max(0, MIN_SIDE - h)))
            per = self._per_call(*x.shape[1:3])
            return [r for i in range(0, len(x), per) for r in self._detect_on_device(x[i:i + per])]
        frames = [_pad_min(np.asarray(f)) for f in frames]
        results: list = []
        i = 0
        while i < len(frames):
            h, w = frames[i].shape[:2]
            per, j = self._per_call(h, w), i + 1
            while j < len(frames) and j - i < per and frames[j].shape[:2] == (h, w):
                j += 1
            x = torch.from_numpy(np.stack(frames[i:j])).to(self.device)
            results += self._detect_on_device(x)
            i = j
        return results

    def _per_call(self, h: int, w: int) -> int:
        return max(1, self.batch_pixels // (_padded(h) * _padded(w)))

    def _detect_on_device(self, x) -> list:
        """Images x (uint8 [n, h, w, 3] RGB on the device) -> ``_to_results`` per image."""
        torch = self._torch
        n, h, w = x.shape[:3]
        ph, pw = _padded(h), _padded(w)
        thr = self.score_threshold
        with torch.inference_mode(), self._exact():
            nhwc = torch.zeros((n, ph, pw, 3), dtype=torch.float32, device=self.device)
            nhwc[:, :h, :w] = x.flip(-1)  # RGB -> BGR, 0..255; zero padding bottom/right
            blob = nhwc.permute(0, 3, 1, 2)  # [n, 3, ph, pw] (stored channels-last)
            if not self.channels_last:
                blob = blob.contiguous()
            del nhwc
            outs = dict(zip(self.net.output_names, self.net(blob)))
            del blob
            # scores of all cells, stride 8 first (yunet.decode's order): [n, cells]
            score = torch.cat([torch.sqrt(outs[f"cls_{s}"][..., 0].clamp(0, 1) * outs[f"obj_{s}"][..., 0].clamp(0, 1))
                               for s in STRIDES], 1)
            b, cell = torch.nonzero(~(score < thr), as_tuple=True)  # NaN passes, as in decode
            rows = torch.cat([torch.cat([outs[f"bbox_{s}"] for s in STRIDES], 1)[b, cell],
                              torch.cat([outs[f"kps_{s}"] for s in STRIDES], 1)[b, cell],
                              score[b, cell, None]], 1)
            b, cell, rows = b.cpu().numpy(), cell.cpu().numpy(), rows.cpu().numpy()
        faces = _faces(cell, rows, ph, pw)
        return [_to_results(suppress(faces[b == k], self.score_threshold, self.nms_threshold)) for k in range(n)]


def _faces(cell: np.ndarray, rows: np.ndarray, pad_h: int, pad_w: int) -> np.ndarray:
    """Candidate cells (index into the stride 8, 16, 32 cells of a padded image, concatenated) and
    their rows [m, 15] (bbox 4, kps 10, score) -> faces [m, 15] float32 (x, y, w, h, five key
    points, score) in padded-input pixels: yunet.decode's arithmetic, in float32."""
    first = np.cumsum([0] + [(pad_h // s) * (pad_w // s) for s in STRIDES[:-1]])
    level = np.searchsorted(first, cell, side="right") - 1
    local = cell - first[level]
    cols = pad_w // np.asarray(STRIDES)[level]
    stride = np.asarray(STRIDES, np.float32)[level]
    r, c = (local // cols).astype(np.float32), (local % cols).astype(np.float32)
    return cell_faces(r, c, stride, rows[:, :4], rows[:, 4:14].reshape(-1, 5, 2), rows[:, 14])
