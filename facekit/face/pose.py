"""Head pose (yaw, pitch, roll in degrees) from 68 iBUG landmarks by PnP against a generic 3-D face.

Convention (what ``faces/pose`` stores, float32 degrees, columns ``POSE_NAMES``):

* Camera frame: x to the image right, y to the image bottom, z forward from the camera into the
  scene (OpenCV's). The head frame is the 3-D model's (``MEAN_FACE_68``): same axes for a face that
  looks straight into the camera (x from the subject's right ear to the left ear, y from the brows
  to the chin, z from the nose tip back into the head), so a frontal face has yaw = pitch = roll = 0.
* ``R`` (head -> camera, from ``cv2.solvePnP``) = ``Rz(roll) @ Ry(-yaw) @ Rx(-pitch)`` with the
  right-handed elementary rotations about the CAMERA axes, i.e. pitch is applied first, then yaw,
  then roll (roll is a rotation in the image plane):
  - **yaw > 0**: the subject turns to THEIR LEFT, so the nose points towards the IMAGE RIGHT
    (in an unmirrored image). Range (-90, 90).
  - **pitch > 0**: the subject looks UP (nose towards the image top). Range (-180, 180].
  - **roll > 0**: the face rotates CLOCKWISE on screen (the subject's left eye, on the image
    right, moves down; head tilted towards their left shoulder). Range (-180, 180].
* Angles are relative to the camera's optical axis, not to the line of sight to the face: a face
  near the image border that looks at the camera has a small non-zero yaw/pitch.
* Camera model: pinhole, focal length ``f = max(w, h)`` pixels (about a 53 deg field of view on the
  long side; the true focal length is unknown, and yaw/pitch depend on it only weakly), principal
  point at the image centre ``((w - 1)/2, (h - 1)/2)`` (pixel centres at integers), no distortion.
  ``image_size`` is the ``(w, h)`` of the frame the landmarks are in (display pixels).

The 3-D model is a generic mean face and real faces differ from it, so expect a few degrees of
error; the fit is rigid (expressions, e.g. an open mouth, add error). ``PoseResult.rms`` reports the
reprojection error in pixels so bad fits (wrong landmarks) can be spotted.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

POSE_NAMES = ("yaw", "pitch", "roll")
POSE_UNITS = "degrees"

# Generic 3-D positions of the 68 iBUG landmarks (units ~ millimetres; x right, y down, z away
# from the viewer, origin near the face centre; outer eye corners 36/45 are ~91 apart).
# Source: the 68-point mean face shipped as assets/model.txt in yinguobing/head-pose-estimation
# (MIT licence) and as landmarks_68_3D in DeepFaceLab's LandmarksProcessor, widely reused for
# solvePnP head pose; it is attributed to OpenFace's (Baltrusaitis et al.) in-the-wild 3-D point
# distribution model mean shape. Used here with the z sign as published (nose tip at z = -36.9).
MEAN_FACE_68 = np.array([
    [ -73.393523,  -29.801432,   47.667532],  # 0
    [ -72.775014,  -10.949766,   45.909403],  # 1
    [ -70.533638,    7.929818,   44.842580],  # 2
    [ -66.850058,   26.074280,   43.141114],  # 3
    [ -59.790187,   42.564390,   38.635298],  # 4
    [ -48.368973,   56.481080,   30.750622],  # 5
    [ -34.121101,   67.246992,   18.456453],  # 6
    [ -17.875411,   75.056892,    3.609035],  # 7
    [   0.098749,   77.061286,   -0.881698],  # 8
    [  17.477031,   74.758448,    5.181201],  # 9
    [  32.648966,   66.929021,   19.176563],  # 10
    [  46.372358,   56.311389,   30.770570],  # 11
    [  57.343480,   42.419126,   37.628629],  # 12
    [  64.388482,   25.455880,   40.886309],  # 13
    [  68.212038,    6.990805,   42.281449],  # 14
    [  70.486405,  -11.666193,   44.142567],  # 15
    [  71.375822,  -30.365191,   47.140426],  # 16
    [ -61.119406,  -49.361602,   14.254422],  # 17
    [ -51.287588,  -58.769795,    7.268147],  # 18
    [ -37.804800,  -61.996155,    0.442051],  # 19
    [ -24.022754,  -61.033399,   -6.606501],  # 20
    [ -11.635713,  -56.686759,  -11.967398],  # 21
    [  12.056636,  -57.391033,  -12.051204],  # 22
    [  25.106256,  -61.902186,   -7.315098],  # 23
    [  38.338588,  -62.777713,   -1.022953],  # 24
    [  51.191007,  -59.302347,    5.349435],  # 25
    [  60.053851,  -50.190255,   11.615746],  # 26
    [   0.653940,  -42.193790,  -13.380835],  # 27
    [   0.804809,  -30.993721,  -21.150853],  # 28
    [   0.992204,  -19.944596,  -29.284036],  # 29
    [   1.226783,   -8.414541,  -36.948060],  # 30
    [ -14.772472,    2.598255,  -20.132003],  # 31
    [  -7.180239,    4.751589,  -23.536684],  # 32
    [   0.555920,    6.562900,  -25.944448],  # 33
    [   8.272499,    4.661005,  -23.695741],  # 34
    [  15.214351,    2.643046,  -20.858157],  # 35
    [ -46.047290,  -37.471411,    7.037989],  # 36
    [ -37.674688,  -42.730510,    3.021217],  # 37
    [ -27.883856,  -42.711517,    1.353629],  # 38
    [ -19.648268,  -36.754742,   -0.111088],  # 39
    [ -28.272965,  -35.134493,   -0.147273],  # 40
    [ -38.082418,  -34.919043,    1.476612],  # 41
    [  19.265868,  -37.032306,   -0.665746],  # 42
    [  27.894191,  -43.342445,    0.247660],  # 43
    [  37.437529,  -43.110822,    1.696435],  # 44
    [  45.170805,  -38.086515,    4.894163],  # 45
    [  38.196454,  -35.532024,    0.282961],  # 46
    [  28.764989,  -35.484289,   -1.172675],  # 47
    [ -28.916267,   28.612716,   -2.240310],  # 48
    [ -17.533194,   22.172187,  -15.934335],  # 49
    [  -6.684590,   19.029051,  -22.611355],  # 50
    [   0.381001,   20.721118,  -23.748437],  # 51
    [   8.375443,   19.035460,  -22.721995],  # 52
    [  18.876618,   22.394109,  -15.610679],  # 53
    [  28.794412,   28.079924,   -3.217393],  # 54
    [  19.057574,   36.298248,  -14.987997],  # 55
    [   8.956375,   39.634575,  -22.554245],  # 56
    [   0.381549,   40.395647,  -23.591626],  # 57
    [  -7.428895,   39.836405,  -22.406106],  # 58
    [ -18.160634,   36.677899,  -15.121907],  # 59
    [ -24.377490,   28.677771,   -4.785684],  # 60
    [  -6.897633,   25.475976,  -20.893742],  # 61
    [   0.340663,   26.014269,  -22.220479],  # 62
    [   8.444722,   25.326198,  -21.025520],  # 63
    [  24.474473,   28.323008,   -5.712776],  # 64
    [   8.449166,   30.596216,  -20.671489],  # 65
    [   0.205322,   31.408738,  -21.903670],  # 66
    [  -7.198266,   30.844876,  -20.328022],  # 67
]
, dtype=np.float64)


class PoseResult(NamedTuple):
    """Output of ``solve_pose`` for N faces (NaN rows where no pose could be fitted)."""

    angles: np.ndarray  # [N, 3] float64 degrees: yaw, pitch, roll (the module's convention)
    rvec: np.ndarray    # [N, 3] float64 Rodrigues rotation vector, head -> camera
    tvec: np.ndarray    # [N, 3] float64 translation, model units (~mm), camera frame
    rms: np.ndarray     # [N] float64 RMS reprojection error in pixels


def camera_matrix(image_size) -> np.ndarray:
    """Pinhole intrinsics ``[3, 3]`` float64 for an image of ``(w, h)`` pixels: ``f = max(w, h)``,
    principal point ``((w - 1)/2, (h - 1)/2)``."""
    w, h = float(image_size[0]), float(image_size[1])
    f = max(w, h)
    return np.array([[f, 0.0, (w - 1) / 2], [0.0, f, (h - 1) / 2], [0.0, 0.0, 1.0]])


def _rx(a):
    c, s = np.cos(a), np.sin(a)
    o, z = np.ones_like(a), np.zeros_like(a)
    return np.stack([np.stack([o, z, z], -1), np.stack([z, c, -s], -1), np.stack([z, s, c], -1)], -2)


def _ry(a):
    c, s = np.cos(a), np.sin(a)
    o, z = np.ones_like(a), np.zeros_like(a)
    return np.stack([np.stack([c, z, s], -1), np.stack([z, o, z], -1), np.stack([-s, z, c], -1)], -2)


def _rz(a):
    c, s = np.cos(a), np.sin(a)
    o, z = np.ones_like(a), np.zeros_like(a)
    return np.stack([np.stack([c, -s, z], -1), np.stack([s, c, z], -1), np.stack([z, z, o], -1)], -2)


def rotation_from_angles(angles) -> np.ndarray:
    """Head -> camera rotations ``[N, 3, 3]`` float64 from ``[N, 3]`` (yaw, pitch, roll) degrees."""
    a = np.radians(np.asarray(angles, dtype=np.float64).reshape(-1, 3))
    yaw, pitch, roll = a[:, 0], a[:, 1], a[:, 2]
    return _rz(roll) @ _ry(-yaw) @ _rx(-pitch)


def angles_from_rotation(R) -> np.ndarray:
    """(yaw, pitch, roll) degrees ``[N, 3]`` float64 from head -> camera rotations ``[N, 3, 3]``
    (inverse of ``rotation_from_angles`` for |yaw| < 90)."""
    R = np.asarray(R, dtype=np.float64).reshape(-1, 3, 3)
    yaw = np.arcsin(np.clip(R[:, 2, 0], -1.0, 1.0))          # R[2, 0] = -sin(-yaw)
    pitch = -np.arctan2(R[:, 2, 1], R[:, 2, 2])
    roll = np.arctan2(R[:, 1, 0], R[:, 0, 0])
    return np.degrees(np.stack([yaw, pitch, roll], axis=-1))


def project_model(angles, tvec, image_size, model: np.ndarray | None = None) -> np.ndarray:
    """Pinhole projection of ``model`` ``[P, 3]`` posed by ``angles`` ``[N, 3]`` degrees and
    ``tvec`` ``[N, 3]`` (camera frame, model units) with ``camera_matrix(image_size)``.
    ``model`` defaults to ``MEAN_FACE_68``. Returns ``[N, P, 2]`` float64 pixels."""
    model = MEAN_FACE_68 if model is None else model
    R = rotation_from_angles(angles)
    t = np.asarray(tvec, dtype=np.float64).reshape(-1, 3)
    X = np.einsum("nij,pj->npi", R, np.asarray(model, dtype=np.float64)) + t[:, None, :]
    K = camera_matrix(image_size)
    uv = X[..., :2] / X[..., 2:3]
    return np.stack([K[0, 0] * uv[..., 0] + K[0, 2], K[1, 1] * uv[..., 1] + K[1, 2]], axis=-1)


# the Levenberg-Marquardt refinement after SQPnP (facekit.face.pnp.refine_many)
REFINE_MAX_ITER = 30     # iterations at most (a face stops when its step is below REFINE_STEP)
REFINE_STEP = 1e-9       # radians / model units (~mm): a step this small ends a face's refinement
REFINE_TRIES = 8         # damping increases (x10 each) before a face that cannot lower its cost stops
REFINE_COST = 1e-12      # a step that lowers the squared error by less than this fraction ends a face's refinement
REFINE_LAMBDA = 1e-3     # initial damping, relative to the mean diagonal of J^T J


def _residuals(obj, pts, K, R, t):
    """Camera-frame points X ``[N, P, 3]`` and reprojection residuals ``[N, P, 2]`` (pixels)."""
    X = np.matmul(R, obj.T).transpose(0, 2, 1) + t[:, None, :]
    z = X[..., 2]
    u = K[0, 0] * X[..., 0] / z + K[0, 2]
    v = K[1, 1] * X[..., 1] / z + K[1, 2]
    return X, np.stack([u, v], axis=-1) - pts


def solve_pose(lm68, image_size, model: np.ndarray | None = None) -> PoseResult:
    """Fit the generic face to 68 landmarks per face: ``cv2.solvePnP`` (SQPnP) per face, then a
    Levenberg-Marquardt refinement of the reprojection error for all faces at once
    (``facekit.face.pnp.refine_many``: the minimum ``cv2.solvePnPRefineLM`` converges to).

    ``lm68``: ``[N, 68, 2]`` pixels in a frame of ``image_size = (w, h)``. Faces with non-finite
    landmarks, or whose fit fails or lands behind the camera, get NaN rows. ``model``: ``[P, 3]``
    3-D points matching the ``P`` landmarks given (default ``MEAN_FACE_68``; pass a row subset of
    it with the same landmark subset to fit, e.g., without the jaw contour).
    """
    import cv2

    model = MEAN_FACE_68 if model is None else model

    lm = np.asarray(lm68, dtype=np.float64).reshape(-1, len(model), 2)
    n = len(lm)
    angles = np.full((n, 3), np.nan)
    rvecs = np.full((n, 3), np.nan)
    tvecs = np.full((n, 3), np.nan)
    rms = np.full(n, np.nan)
    K = camera_matrix(image_size)
    dist = np.zeros(4)
    obj = np.ascontiguousarray(model, dtype=np.float64)
    ok_rows, R0, t0 = [], [], []
    for i in range(n):
        pts = np.ascontiguousarray(lm[i])
        if not np.isfinite(pts).all():
            continue
        try:
            ok, rvec, tvec = cv2.solvePnP(obj, pts, K, dist, flags=cv2.SOLVEPNP_SQPNP)
        except cv2.error:
            continue
        if ok and np.isfinite(rvec).all() and np.isfinite(tvec).all():
            ok_rows.append(i)
            R0.append(cv2.Rodrigues(rvec)[0])
            t0.append(tvec[:, 0])
    if not ok_rows:
        return PoseResult(angles, rvecs, tvecs, rms)
    rows = np.array(ok_rows)
    from .pnp import refine_many

    R, t = np.array(R0), np.array(t0)
    refine_many(obj, np.ascontiguousarray(lm[rows]), K[0, 0], K[1, 1], K[0, 2], K[1, 2], R, t,
                REFINE_MAX_ITER, REFINE_TRIES, REFINE_STEP, REFINE_COST, REFINE_LAMBDA)
    _, r = _residuals(obj, lm[rows], K, R, t)
    front = np.isfinite(t).all(axis=1) & (t[:, 2] > 0) & np.isfinite(R).all(axis=(1, 2))
    rows, R, t, r = rows[front], R[front], t[front], r[front]
    angles[rows] = angles_from_rotation(R)
    rvecs[rows] = np.array([cv2.Rodrigues(Ri)[0][:, 0] for Ri in R]).reshape(-1, 3)
    tvecs[rows] = t
    rms[rows] = np.sqrt(np.mean(np.sum(r ** 2, axis=-1), axis=-1))
    return PoseResult(angles, rvecs, tvecs, rms)


def pose_from_landmarks(lm68, image_size) -> np.ndarray:
    """Yaw, pitch, roll in degrees (module convention) ``[N, 3]`` float32 from ``[N, 68, 2]``
    landmarks in a frame of ``image_size = (w, h)`` pixels; NaN rows where no fit was possible."""
    return solve_pose(lm68, image_size).angles.astype(np.float32)


def pose_axes_2d(angles, origin, length) -> np.ndarray:
    """End points of the head axes for drawing, orthographic: ``[N, 4, 2]`` float64 pixels =
    origin, X end (towards the subject's left ear: image right when frontal), Y end (towards the
    top of the head: image up when frontal), Z end (where the face points: the nose direction,
    which collapses onto the origin for a frontal face).

    ``angles``: ``[N, 3]`` (yaw, pitch, roll) degrees, e.g. ``faces/pose``; ``origin``: ``[N, 2]``
    pixels (e.g. the nose tip, landmark 30); ``length``: scalar or ``[N]`` pixels (e.g. half the
    face box width).
    """
    R = rotation_from_angles(angles)
    o = np.asarray(origin, dtype=np.float64).reshape(-1, 2)
    L = np.broadcast_to(np.asarray(length, dtype=np.float64), (len(o),))
    axes = np.stack([R[:, :2, 0], -R[:, :2, 1], -R[:, :2, 2]], axis=1)   # head +x, -y (up), -z (out)
    return np.concatenate([o[:, None], o[:, None] + axes * L[:, None, None]], axis=1)


from .. import stages  # noqa: E402  (the stage registry imports this module)


@stages.register
class PoseStage(stages.Stage):
    """``pose``: yaw/pitch/roll in degrees per face from its 68 landmarks -> ``faces/pose`` [N,3]."""

    name = "pose"
    consumes = "frames"
    requires = ("landmarks",)
    outputs = ("faces/pose",)

    @property
    def params(self) -> dict:
        return {"method": "solvePnP (SQPnP) + batched Levenberg-Marquardt refinement on all 68 points",
                "model": "generic 68-point mean face", "focal": "max(width, height) pixels",
                "principal_point": "image centre"}

    def begin(self, writer, info) -> None:
        self._size = (info.width, info.height)
        writer.create("faces/pose", (3,), "f4", attrs={
            **self.params, "columns": list(POSE_NAMES), "units": POSE_UNITS,
            "convention": "yaw > 0: subject turns to their left (nose to image right); pitch > 0: looks up; "
                          "roll > 0: face turns clockwise on screen"})

    def on_frames(self, batch, row0: int, writer) -> None:
        lm = batch.faces["landmarks"][:, :, :2]  # (x, y); fan3d adds depth
        batch.faces["pose"] = (pose_from_landmarks(lm, self._size) if len(lm)
                               else np.zeros((0, 3), np.float32)).astype(np.float32)
        self.write_faces(writer, batch)
