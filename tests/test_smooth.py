"""One-Euro smoothing of landmarks."""

from __future__ import annotations

import numpy as np

import facekit
from facekit.face.smooth import OneEuro, TrackSmoother


def test_one_euro_removes_jitter_and_follows_motion():
    rng = np.random.default_rng(0)
    t = np.arange(200) / 25
    still = 100 + rng.normal(0, 1.0, 200)
    f = OneEuro()
    out = np.array([f(ti, np.array([x]))[0] for ti, x in zip(t, still)])
    assert np.std(np.diff(out[50:])) < 0.3 * np.std(np.diff(still[50:]))
    # a fast linear move is followed with little lag
    moving = 100 + 200 * t
    f = OneEuro()
    out = np.array([f(ti, np.array([x]))[0] for ti, x in zip(t, moving)])
    assert np.abs(out[50:] - moving[50:]).max() < 10  # pixels, at 200 px/s


def test_track_smoother_keeps_tracks_apart():
    s = TrackSmoother()
    a = s(0.0, [0, 1], np.array([[0.0], [100.0]]))
    b = s(0.04, [0, 1], np.array([[1.0], [101.0]]))
    assert a.tolist() == [[0.0], [100.0]] and 0 < b[0, 0] < 1 and 100 < b[1, 0] < 101


def test_smooth_option_reduces_landmark_jitter(clips, tmp_path):
    raw, smooth = tmp_path / "raw.h5", tmp_path / "smooth.h5"
    facekit.extract([str(clips["face"])], raw, progress=False, stages="landmarks")
    s = facekit.extract([str(clips["face"])], smooth, progress=False, stages="landmarks", smooth=True)
    assert s.ok
    with facekit.open(raw) as a, facekit.open(smooth) as b:
        la, lb = a["face.mp4"].faces.landmarks, b["face.mp4"].faces.landmarks
        assert "track" in b["face.mp4"].attrs["stages"]
        assert b["face.mp4"].attrs["stage_params"]["landmarks"]["smoothing"]["filter"] == "one-euro"
        jitter = lambda x: np.abs(np.diff(x, n=2, axis=0)).mean()  # noqa: E731
        assert jitter(lb) < jitter(la)
        assert np.abs(lb - la).mean() < 3  # pixels: same place
