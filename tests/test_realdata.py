"""Results on the real clips in ../shared/data (skipped when absent)."""

from __future__ import annotations

import numpy as np
import pytest

import facekit

pytestmark = pytest.mark.realdata


@pytest.fixture(scope="module")
def grid_store(shared_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("grid") / "grid.h5"
    s = facekit.extract([str(shared_data / "videos" / "grid")], out, progress=False)
    assert s.ok, s.to_dict()
    return out


def test_grid_done_when(grid_store):
    """The issue's acceptance: 11 videos, 75 frames each, one face per frame, mel covering 3 s."""
    info = facekit.info(grid_store)
    assert info["videos"] == 11 and info["done"] == 11 and info["failed"] == 0
    with facekit.open(grid_store) as st:
        for key in st:
            v = st[key]
            assert len(v.frames) == 75, key
            np.testing.assert_allclose(v.frames.t, np.arange(75) / 25, atol=1e-6)
            assert v.faces.per_frame_counts().tolist() == [1] * 75, key
            mel = v.audio["mel"]
            assert mel.data.shape[1] == 80
            assert mel.t[0] == pytest.approx(0.0, abs=0.05) and mel.t[-1] == pytest.approx(3.0, abs=0.05)
            # provenance
            assert v.attrs["source_path"].endswith(key)
            assert v.faces.attrs("box")["model"] == "yunet"
            assert len(v.faces.attrs("box")["weights_sha256"]) == 64
            assert v.attrs["video_codec"] == "mpeg1video" and v.attrs["container_n_frames"] == -1
        assert st.attrs["facekit_version"] == facekit.__version__ and "config" in st.attrs


def test_grid_speech_is_louder_than_silence(grid_store, shared_data):
    """The mel features follow the speech: GRID clips start and end with silence."""
    with facekit.open(grid_store) as st:
        for key in st:
            e = st[key].audio["mel"].data.mean(axis=1)
            n = len(e)
            assert e[n // 3: 2 * n // 3].mean() > e[: n // 10].mean() + 10, key  # dB


def test_vfr_clip_keeps_its_real_timestamps(shared_data, tmp_path):
    out = tmp_path / "vr.h5"
    s = facekit.extract([str(shared_data / "videos" / "videoretalking" / "face_1.mp4")], out, progress=False,
                        stages="detect")
    assert s.ok
    with facekit.open(out) as st:
        v = st["face_1.mp4"]
        t = v.frames.t
        assert len(t) == 135 and (np.diff(t) > 0).all()
        assert v.attrs["fps_nominal"] == pytest.approx(30) and v.attrs["fps_avg"] == pytest.approx(22.1, abs=0.2)
        assert (v.faces.per_frame_counts() >= 1).mean() >= 0.99


def test_hamilton_fps_sampling(shared_data, tmp_path):
    out = tmp_path / "h.h5"
    s = facekit.extract([str(shared_data / "videos" / "hamilton_multiface.mp4")], out, progress=False,
                        stages="detect,mel", fps=5)
    assert s.ok
    with facekit.open(out) as st:
        v = st["hamilton_multiface.mp4"]
        t = v.frames.t
        # the video stream starts 0.844 s into the container (its audio at 0): t keeps that offset,
        # and 5 frames/s over the 9.14 s between its first and last frame gives 46 frames
        assert t[0] == pytest.approx(0.844, abs=0.01)
        assert len(t) == 46
        np.testing.assert_allclose(np.diff(t), 0.2, atol=0.034)  # within one 29.97 fps frame
        assert v.attrs["width"] == 640 and v.attrs["height"] == 360
        # frames are sampled from the 275 real frames (no padding to 300)
        assert v.frames.index.max() < 275


def test_landmark_nme_on_annotated_faces(shared_data):
    """Default landmark backend (dlib68 on boxes from YuNet key points): mean NME <= 5 %."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
    import landmark_accuracy

    rows = landmark_accuracy.evaluate(shared_data)
    errs = [e for _, e, _ in rows if e is not None]
    assert len(errs) == len(rows) == 8  # every annotated face found
    e300 = [e for n, e, _ in rows if n.startswith("300w/")]
    assert np.mean(e300) <= 0.05, e300
    assert np.mean(errs) <= 0.055, errs


def test_single_face_clips_one_track(grid_store, shared_data, tmp_path):
    """Single-face clips: ONE track covering >= 99 % of frames (GRID and VideoReTalking)."""
    out = tmp_path / "vr.h5"
    s = facekit.extract([str(shared_data / "videos" / "videoretalking")], out, progress=False,
                        stages="track")
    assert s.ok
    for path in (grid_store, out):
        with facekit.open(path) as st:
            for key in st:
                v = st[key]
                tr = v.group["tracks"]
                n = len(v.frames)
                assert len(tr["id"]) == 1, (key, tr["n_frames"][()])
                assert tr["n_frames"][0] >= 0.99 * n, key
                assert (v.faces.per_frame_counts() == 1).mean() >= 0.99, key


def test_hamilton_tracks_break_at_scene_cuts(shared_data, tmp_path):
    out = tmp_path / "h.h5"
    s = facekit.extract([str(shared_data / "videos" / "hamilton_multiface.mp4")], out, progress=False,
                        stages="track")
    assert s.ok
    with facekit.open(out) as st:
        v = st["hamilton_multiface.mp4"]
        shot = v.group["frames/shot"][()]
        assert np.flatnonzero(np.diff(shot)).tolist() == [19, 81, 210]  # cuts at frames 20, 82, 211
        tr = v.group["tracks"]
        for first, last in zip(tr["first_frame"][()], tr["last_frame"][()]):
            assert shot[first] == shot[last]  # no track spans a cut
        primary = int(np.flatnonzero(tr["primary"][()])[0])
        assert tr["first_frame"][primary] >= 82 and tr["last_frame"][primary] <= 210  # the performer


def test_grid_aligned_eyes_on_template(grid_store):
    from facekit.face import align

    with facekit.open(grid_store) as st:
        for key in st:
            f = st[key].faces
            eyes = align.transform_points(align.invert_affine(f.affine.astype(np.float64)),
                                          f.kps5[:, :2].astype(np.float64))
            d = np.linalg.norm(eyes - align.ARCFACE_112[:2], axis=2)
            # the standard 5-point least-squares fit also weighs the mouth corners, which move with
            # speech: eyes stay within ~2 px (mean 1.1 px, max 2.07 px over GRID; docs/accuracy.md)
            assert d.mean() < 1.5 and np.percentile(d, 95) < 2.0 and d.max() < 2.5, key
            assert np.abs(f.pose[:, 0]).max() < 30, key  # frontal speakers
