"""dlib68's image rule (landmarks.Dlib68._crop): faces under 256 px enlarged in a crop, 256-512 px
read in the frame itself, larger ones in a crop reduced by exact 2x2 means; all mapped back to
frame pixels."""

from __future__ import annotations

import cv2
import numpy as np

import mediagen
from facekit import zoo
from facekit.face import landmarks as lmk
from facekit.face.detect import load_detector


def _model():
    return lmk.Dlib68(zoo.resolve("dlib68"))


def test_halved_face_maps_back_exactly():
    """A face of 256-512 px read in place, and the same frame enlarged 2x by pixel replication (box
    >= 512 px: one 2x2 reduction gives back the original pixels): the landmarks map back exactly."""
    m = _model()
    rgb = mediagen.face_image((1280, 720))
    _, _, k = load_detector("yunet").detect(rgb)
    x0, y0 = np.round(lmk.box_from_kps5(k[:1])[0, :2]).astype(int)
    box = np.array([[x0, y0, x0 + 300, y0 + 300]], float)  # 256 <= 300 < 512: in place
    small = m.predict_many([rgb], [0], box)[0]
    big = np.ascontiguousarray(cv2.resize(rgb, None, fx=2, fy=2, interpolation=cv2.INTER_NEAREST))
    large = m.predict_many([big], [0], 2 * box)[0]  # 600 px: one halving (x0 - margin is even)
    assert np.isfinite(small).all()
    # pixel centres: p in the small frame is 2p + 0.5 in the one enlarged by replication
    assert np.abs(large - (2 * small + 0.5)).max() < 1e-9
    # and the points lie on the face (inside its box, give or take the jaw)
    assert (small[:, 0] > x0 - 30).all() and (small[:, 0] < x0 + 330).all()


def test_each_path_crops_only_what_it_needs():
    m = _model()
    rgb = np.zeros((720, 1280, 3), np.uint8)
    for side, shape in ((100, None), (300, rgb.shape), (700, None)):
        crop, rect, (cx0, cy0, kx, ky) = m._crop(rgb, np.array([200.0, 10, 200 + side, 10 + side]))
        if shape is not None:
            assert crop is rgb and (kx, ky) == (1.0, 1.0)  # the frame itself, no copy
        else:
            assert crop is not rgb and lmk.WORK_SIDE <= (rect[2] - rect[0]) < 2 * lmk.WORK_SIDE + 1


def test_non_finite_and_off_image_boxes_give_nan():
    m = _model()
    rgb = np.zeros((720, 1280, 3), np.uint8)
    boxes = [[np.nan] * 4, [0, 0, np.inf, np.inf],
             [2000, 0, 2100, 100], [2000, 0, 2300, 300], [2000, 0, 2700, 700],  # right of the frame, each path
             [-900, -900, -600, -600]]
    out = m.predict_many([rgb] * len(boxes), np.arange(len(boxes)), np.array(boxes, float))
    assert np.isnan(out).all()
