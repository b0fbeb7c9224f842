"""Self-checks for tests/mediagen.py: every generator makes what it promises."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))
import mediagen  # noqa: E402

av = pytest.importorskip("av")


# ---------------------------------------------------------------- helpers
def _video_frames(path):
    with av.open(str(path)) as c:
        return [(f.time, f.rotation, f.to_ndarray(format="rgb24")) for f in c.decode(video=0)]


def _audio_16k_mono(path):
    with av.open(str(path)) as c:
        if not c.streams.audio:
            return None
        rs = av.AudioResampler(format="flt", layout="mono", rate=16000,
                               options={"rematrix_maxval": "1.0"})
        chunks = []
        for fr in c.decode(audio=0):
            chunks += [o.to_ndarray() for o in rs.resample(fr)]
        chunks += [o.to_ndarray() for o in rs.resample(None)]
    return np.concatenate(chunks, axis=1)[0]


@pytest.fixture(scope="module")
def cascade():
    cv2 = pytest.importorskip("cv2")
    c = cv2.CascadeClassifier(cv2.data.haarcascades + "haarcascade_frontalface_default.xml")
    if c.empty():
        pytest.skip("no haar cascade available")

    def detect(rgb):
        gray = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2GRAY)
        return c.detectMultiScale(gray, 1.1, 5, minSize=(50, 50))

    return detect


# ---------------------------------------------------------------- tests
def test_find_ffmpeg():
    exe = mediagen.find_ffmpeg()
    assert os.path.isfile(exe) and os.access(exe, os.X_OK)


@pytest.mark.parametrize("name,kw", [
    ("h264_tone.mp4", dict(audio="tone")),
    ("h264_speech.mp4", dict(audio="speech")),
    ("mpeg1.mpg", dict(codec="mpeg1video")),
    ("pcm.mkv", dict(audio="speech")),
    ("odd_size.mp4", dict(size=(161, 121), n_frames=10)),
])
def test_face_video(tmp_path, cascade, name, kw):
    t0 = time.perf_counter()
    p = mediagen.face_video(tmp_path / name, **kw)
    assert time.perf_counter() - t0 < 3.0
    n = kw.get("n_frames", 30)
    frames = _video_frames(p)
    assert len(frames) == n
    w, h = kw.get("size", (320, 240))
    assert frames[0][2].shape == (h + h % 2, w + w % 2, 3)
    # the face moves
    assert not np.array_equal(frames[0][2], frames[5][2])
    if w >= 320:
        # exactly one face in every frame (checked on every 6th: haar is slow)
        assert all(len(cascade(f)) == 1 for _, _, f in frames[::6])
    with av.open(str(p)) as c:
        assert len(c.streams.audio) == 1
        assert c.streams.audio[0].rate == 44100
        assert c.streams.audio[0].channels == 2
    a = _audio_16k_mono(p)
    dur = n / 25
    assert abs(len(a) / 16000 - dur) < 0.1
    assert 0.2 < np.abs(a).max() <= 1.0


def test_speech_has_pauses_and_tone_is_440():
    tone = mediagen.make_audio("tone", 1.0)[:, 0].astype(float)
    spec = np.abs(np.fft.rfft(tone))
    assert abs(np.argmax(spec) * 44100 / len(tone) - 440) < 2
    sp = mediagen.make_audio("speech", 3.0)[:, 0].astype(float)
    env = np.abs(sp).reshape(-1, 441).max(1)  # 10 ms blocks
    assert (env < 50).mean() > 0.15        # pauses
    assert (env > 3000).mean() > 0.3       # voiced parts


def test_silent_video(tmp_path):
    p = mediagen.silent_video(tmp_path / "silent.mp4")
    with av.open(str(p)) as c:
        assert len(c.streams.audio) == 0
        assert len(c.streams.video) == 1
    assert len(_video_frames(p)) == 30


def test_vfr_video(tmp_path):
    p, ts = mediagen.vfr_video(tmp_path / "vfr.mp4", n_frames=30)
    assert len(ts) == 30 and ts[0] == 0.0
    d = np.diff(ts)
    assert np.allclose(sorted(set(np.round(d, 6))), [1 / 30, 1 / 15])
    got = [t for t, _, _ in _video_frames(p)]
    assert len(got) == 30
    np.testing.assert_allclose(got, ts, atol=1e-6)
    with av.open(str(p)) as c:
        s = c.streams.video[0]
        assert s.frames == 30
        assert s.guessed_rate == 30
        assert s.average_rate != s.guessed_rate


def test_vfr_video_with_audio(tmp_path):
    p, ts = mediagen.vfr_video(tmp_path / "vfr_a.mp4", n_frames=20, audio="speech")
    got = [t for t, _, _ in _video_frames(p)]
    np.testing.assert_allclose(got, ts, atol=1e-6)
    a = _audio_16k_mono(p)
    assert abs(len(a) / 16000 - 1.0) < 0.05  # 10 * (1/30 + 1/15) s


@pytest.mark.parametrize("rotation", [90, 180, 270])
def test_rotated_video(tmp_path, cascade, rotation):
    p = mediagen.rotated_video(tmp_path / f"rot{rotation}.mp4", rotation=rotation, n_frames=10)
    frames = _video_frames(p)
    assert len(frames) == 10
    expected = {90: 90, 180: -180, 270: -90}[rotation]  # PyAV range is [-180, 180]
    assert {r for _, r, _ in frames} == {expected}
    stored = frames[0][2]
    assert stored.shape[:2] == ((320, 240) if rotation % 180 else (240, 320))
    for _, r, f in frames:
        assert np.rot90(f, k=r // 90).shape == (240, 320, 3)
    for _, r, f in frames[::4]:
        assert len(cascade(np.rot90(f, k=r // 90))) == 1
        assert len(cascade(f)) == 0


def test_rotation_matches_ffmpeg_autorotate(tmp_path):
    import subprocess

    p = mediagen.rotated_video(tmp_path / "rot90.mp4", rotation=90, n_frames=3, audio=None)
    (_, r, stored), *_ = _video_frames(p)
    out = subprocess.run([mediagen.find_ffmpeg(), "-loglevel", "error", "-i", str(p),
                          "-frames:v", "1", "-f", "rawvideo", "-pix_fmt", "rgb24", "-"],
                         capture_output=True, check=True).stdout
    ff = np.frombuffer(out, np.uint8).reshape(240, 320, 3)
    assert np.array_equal(np.rot90(stored, k=r // 90), ff)


@pytest.mark.parametrize("name", ["a.m4a", "a.wav", "a.mp3"])
def test_audio_only(tmp_path, name):
    p = mediagen.audio_only(tmp_path / name, duration=1.0)
    with av.open(str(p)) as c:
        assert len(c.streams.video) == 0
        assert len(c.streams.audio) == 1
    a = _audio_16k_mono(p)
    assert abs(len(a) - 16000) < 600  # AAC keeps up to one frame of padding
    if name.endswith(".wav"):
        assert len(a) == 16000


@pytest.mark.parametrize("make", [mediagen.zero_byte, mediagen.text_as_mp4,
                                  mediagen.mp4_without_moov])
def test_unreadable_files(tmp_path, make):
    p = make(tmp_path / "bad.mp4")
    with pytest.raises(av.error.InvalidDataError):
        av.open(str(p))


def test_mp4_without_moov_has_mdat(tmp_path):
    p = mediagen.mp4_without_moov(tmp_path / "nomoov.mp4")
    boxes = [b[0] for b in mediagen._top_level_boxes(p.read_bytes())]
    assert "mdat" in boxes and "moov" not in boxes


@pytest.mark.parametrize("name,kw", [("t.mkv", {}), ("t.ts", {}),
                                     ("t.mp4", {"mp4_layout": "fragmented"}),
                                     ("t.mp4", {"mp4_layout": "faststart"})])
def test_truncated_video(tmp_path, name, kw):
    p = mediagen.truncated_video(tmp_path / name, n_frames=50, **kw)
    n = 0
    with av.open(str(p)) as c:
        try:
            for _ in c.decode(video=0):
                n += 1
        except av.error.InvalidDataError:
            assert name.endswith(".mp4")
    assert 10 <= n < 50


def test_still_image_and_frames_folder(tmp_path, cascade):
    import cv2

    for ext in ("jpg", "png"):
        p = mediagen.still_image(tmp_path / f"face.{ext}")
        img = cv2.imread(str(p))
        assert img.shape == (240, 320, 3)
        assert len(cascade(cv2.cvtColor(img, cv2.COLOR_BGR2RGB))) == 1
    d = mediagen.frames_folder(tmp_path / "frames", n=10)
    names = sorted(os.listdir(d))
    assert names == [f"{i:05d}.jpg" for i in range(1, 11)]
    imgs = [cv2.imread(str(Path(d) / n)) for n in names]
    assert not np.array_equal(imgs[0], imgs[3])
    assert all(len(cascade(cv2.cvtColor(i, cv2.COLOR_BGR2RGB))) == 1 for i in imgs[::3])
