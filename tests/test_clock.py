"""facekit.clock: putting a stream on another stream's clock (nearest, linear, mean)."""

from __future__ import annotations

import numpy as np
import pytest

from facekit import clock
from facekit.audio.mel import deltas, with_deltas

MEL_T = np.arange(301) * 0.01  # 3 s of log-Mel windows, 100 per second
VIDEO_T = np.arange(75) * 0.04  # 25 fps


def test_worked_example_from_the_docs():
    data = np.arange(301, dtype=np.float32)[:, None]
    near = clock.resample(data, MEL_T, VIDEO_T, "nearest")
    lin = clock.resample(data, MEL_T, VIDEO_T, "linear")
    mean = clock.resample(data, MEL_T, VIDEO_T, "mean")
    np.testing.assert_array_equal(near[:4, 0], [0, 4, 8, 12])
    np.testing.assert_allclose(lin[:, 0], near[:, 0], atol=1e-3)
    # frame 0 owns [-0.02, 0.02): windows 0, 1; frame 1 owns [0.02, 0.06): windows 2..5
    np.testing.assert_allclose(mean[:3, 0], [0.5, 3.5, 7.5])
    assert near.dtype == np.float32 and mean.shape == (75, 1)


def test_mean_is_the_mean_of_the_rows_in_each_span_on_a_variable_frame_rate():
    rng = np.random.default_rng(0)
    data = rng.normal(size=(301, 3))
    t_dst = np.array([0.1, 0.15, 0.3, 0.32, 0.9])  # irregular frame times
    out = clock.resample(data, MEL_T, t_dst, "mean")
    lo, hi = clock.spans(t_dst)
    np.testing.assert_allclose(lo, [0.075, 0.125, 0.225, 0.31, 0.61])
    np.testing.assert_allclose(hi, [0.125, 0.225, 0.31, 0.61, 1.19])
    for k in range(len(t_dst)):
        inside = (MEL_T >= lo[k] - 1e-12) & (MEL_T < hi[k] - 1e-12)
        np.testing.assert_allclose(out[k], data[inside].mean(axis=0), atol=1e-12)


def test_linear_interpolates_between_centres():
    data = np.stack([np.sin(MEL_T), MEL_T ** 2], axis=1)
    t = np.array([0.005, 0.123, 1.5, 2.9999])
    out = clock.resample(data, MEL_T, t, "linear")
    for k in range(2):
        np.testing.assert_allclose(out[:, k], np.interp(t, MEL_T, data[:, k]), atol=1e-12)


def test_coarse_source_mean_falls_back_to_nearest():
    t_src = 0.48 + 0.96 * np.arange(4)  # VGGish-like examples
    data = np.arange(4.0)[:, None]
    t = np.arange(0, 3.84, 0.04)
    mean = clock.resample(data, t_src, t, "mean")
    near = clock.resample(data, t_src, t, "nearest")
    assert not np.isnan(near).any()
    # where a frame's 40 ms span holds an example centre the mean is that example, else the nearest
    np.testing.assert_array_equal(mean, near)


def test_rows_outside_the_source_are_nan():
    data = np.ones((101, 2), np.float32)
    t_src = 1.0 + np.arange(101) * 0.01  # audio from 1.0 s to 2.0 s
    t = np.array([0.0, 0.994, 0.996, 1.5, 2.004, 2.006, 3.0])
    for m in clock.METHODS:
        out = clock.resample(data, t_src, t, m)
        assert np.isnan(out[:, 0]).tolist() == [True, True, False, False, False, True, True], m


def test_empty_source_and_integer_data():
    assert np.isnan(clock.resample(np.zeros((0, 4), np.float32), [], VIDEO_T)).all()
    ints = np.arange(10, dtype=np.uint8)[:, None]
    out = clock.resample(ints, np.arange(10) * 0.1, [0.0, 0.05, 5.0], "linear")
    assert out.dtype == np.float64 and out[1, 0] == pytest.approx(0.5) and np.isnan(out[2, 0])


def test_one_row_source_needs_its_hop():
    out = clock.resample(np.ones((1, 1)), [0.48], [0.0, 0.48, 0.95, 1.0], "nearest", hop=0.96)
    assert np.isnan(out[:, 0]).tolist() == [False, False, False, True]


def test_bad_arguments():
    with pytest.raises(ValueError, match="method"):
        clock.resample(np.zeros((3, 1)), [0, 1, 2], [0], "cubic")
    with pytest.raises(ValueError, match="rows"):
        clock.resample(np.zeros((3, 1)), [0, 1], [0])
    with pytest.raises(ValueError, match="non-decreasing"):
        clock.resample(np.zeros((3, 1)), [0, 2, 1], [0])


def test_deltas_follow_the_htk_regression_formula():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(40, 5)).astype(np.float32)
    d = deltas(x, 2)
    xp = np.concatenate([x[:1], x[:1], x, x[-1:], x[-1:]])  # edges repeated
    want = (1 * (xp[3:-1] - xp[1:-3]) + 2 * (xp[4:] - xp[:-4])) / 10.0
    np.testing.assert_allclose(d, want, atol=1e-5)
    # in the interior it is librosa's (Savitzky-Golay) first derivative over 5 frames
    import librosa

    lib = librosa.feature.delta(x.T, width=5, order=1, mode="interp").T
    np.testing.assert_allclose(d[2:-2], lib[2:-2], atol=1e-5)
    full = with_deltas(x, 2)
    assert full.shape == (40, 15)
    np.testing.assert_allclose(full[:, 10:], deltas(d, 2), atol=1e-6)
