"""facekit.media: probe, iter_frames, read_audio, MediaError, prefetch.

Generated media come from tests/mediagen.py (made once per module); the real-data tests at the
end use ../shared/data and skip without it.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))
import mediagen  # noqa: E402

from facekit import media  # noqa: E402
from facekit.media import MediaError, iter_frames, prefetch, probe, read_audio  # noqa: E402

N, FPS, W, H = 30, 25, 320, 240  # the main generated clip
AAC_FRAME_16K = math.ceil(1024 * 16000 / 44100)  # one AAC frame (1024 samples at 44.1 kHz) at 16 kHz


# ---------------------------------------------------------------- helpers
def _all(path, **kw):
    """Concatenate every batch: (rgb, t, index, batches)."""
    batches = list(iter_frames(path, **kw))
    return (np.concatenate([b.rgb for b in batches]), np.concatenate([b.t_sec for b in batches]),
            np.concatenate([b.index for b in batches]), batches)


def _mad(a, b) -> float:
    """Mean absolute difference of two uint8 images."""
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


def _source(n=N, size=(W, H)):
    return list(mediagen.face_frames(n, size))


def _one_line(err: MediaError, path) -> str:
    """Check that str(err) is one line "<path>: <cause>"; return the cause."""
    msg = str(err)
    assert "\n" not in msg and "\r" not in msg, msg
    assert msg == f"{path}: {err.cause}", msg
    assert err.path == str(path) and err.cause.strip()
    return err.cause


def _ffmpeg(*args):
    subprocess.run([mediagen.find_ffmpeg(), "-hide_banner", "-loglevel", "error", "-nostdin", "-y",
                    *map(str, args)], check=True, capture_output=True)


# ---------------------------------------------------------------- generated media (once per module)
@pytest.fixture(scope="module")
def gen(tmp_path_factory):
    d = tmp_path_factory.mktemp("media")
    vfr, vfr_ts = mediagen.vfr_video(d / "vfr.mp4", n_frames=N)
    return {
        "face": mediagen.face_video(d / "face.mp4", n_frames=N, fps=FPS, size=(W, H), audio="tone"),
        "silent": mediagen.silent_video(d / "silent.mp4", n_frames=10),
        "vfr": vfr, "vfr_ts": vfr_ts,
        "m4a": mediagen.audio_only(d / "speech.m4a", duration=1.0),
        "wav": mediagen.audio_only(d / "speech.wav", duration=1.0),
        "image": mediagen.still_image(d / "still.png", size=(W, H)),
        "folder": mediagen.frames_folder(d / "frames", n=12, size=(W, H), ext=".png", digits=1),
        "dir": d,
    }


# ---------------------------------------------------------------- probe
def test_probe_video_fields(gen):
    info = probe(gen["face"])
    assert (info.kind, info.has_video, info.video_codec, info.pix_fmt) == ("video", True, "h264", "yuv420p")
    assert (info.width, info.height, info.rotation) == (W, H, 0)
    assert info.fps_nominal == pytest.approx(FPS) and info.fps_avg == pytest.approx(FPS)
    assert info.n_frames == N
    assert info.duration_sec == pytest.approx(N / FPS, abs=0.05)
    assert (info.has_audio, info.audio_codec, info.audio_rate, info.audio_channels) == (True, "aac", 44100, 2)
    attrs = info.to_attrs()
    assert "frame_files" not in attrs and None not in attrs.values() and attrs["width"] == W


def test_probe_mkv_has_no_frame_count(clips):
    info = probe(clips["face2"])  # Matroska stores no frame count, like MPEG-1
    assert info.n_frames is None and info.fps_nominal == pytest.approx(10)
    assert (info.audio_codec, info.audio_rate) == ("pcm_s16le", 44100)
    rgb, t, idx, _ = _all(clips["face2"])
    assert len(rgb) == 12 and np.allclose(t, np.arange(12) / 10, atol=1e-6)


def test_probe_silent_and_audio_only(gen):
    silent = probe(gen["silent"])
    assert silent.has_video and not silent.has_audio and silent.audio_rate is None
    for p in (gen["m4a"], gen["wav"]):
        info = probe(p)
        assert (info.kind, info.has_video, info.has_audio, info.audio_channels) == ("audio", False, True, 2)
        assert info.duration_sec == pytest.approx(1.0, abs=0.05)


@pytest.mark.parametrize("rotation", [90, 180, 270])
def test_rotation_frames_come_out_upright(tmp_path, rotation):
    """A phone-style clip: stored pixels turned, display matrix says how to turn them back."""
    n = 6
    p = mediagen.rotated_video(tmp_path / f"rot{rotation}.mp4", rotation=rotation, n_frames=n, audio=None)
    info = probe(p)
    assert info.rotation == (-rotation) % 360  # MediaInfo.rotation is clockwise
    assert (info.width, info.height) == (W, H)  # display size; stored is H x W for 90/270
    rgb, t, _, _ = _all(p)
    assert rgb.shape == (n, H, W, 3)
    src = _source(n)
    assert max(_mad(a, b) for a, b in zip(rgb, src)) < 4
    assert min(_mad(np.rot90(a, 2), b) for a, b in zip(rgb, src)) > 10  # the check can tell orientations
    small = next(iter_frames(p, max_side=160, info=info))  # downscaling happens before the rotation
    assert small.rgb.shape == (n, 120, 160, 3) and small.scale == pytest.approx(0.5)


@pytest.mark.parametrize("rotation", [90, 270])
def test_rotation_swaps_width_and_height(tmp_path, rotation):
    """Upright stored pixels plus a 90/270 display matrix: displayed frames are turned and portrait."""
    n = 3
    p = mediagen.rotated_video(tmp_path / "r.mp4", rotation=rotation, n_frames=n, audio=None, upright=False)
    info = probe(p)
    assert (info.width, info.height) == (H, W)
    rgb, _, _, _ = _all(p)
    assert rgb.shape == (n, W, H, 3)
    src = _source(n)
    assert max(_mad(a, np.rot90(b, rotation // 90)) for a, b in zip(rgb, src)) < 4


# ---------------------------------------------------------------- iter_frames
def test_batches_bounded_and_timed(gen):
    batches = list(iter_frames(gen["face"], batch_size=7))
    assert [len(b.rgb) for b in batches] == [7, 7, 7, 7, 2]
    for b in batches:
        assert b.rgb.dtype == np.uint8 and b.rgb.shape[1:] == (H, W, 3) and b.rgb.flags.c_contiguous
        assert b.t_sec.dtype == np.float64 and b.index.dtype == np.int64 and b.scale == 1.0
        assert len(b.t_sec) == len(b.index) == len(b.rgb)
    rgb = np.concatenate([b.rgb for b in batches])
    assert np.array_equal(np.concatenate([b.index for b in batches]), np.arange(N))
    assert np.allclose(np.concatenate([b.t_sec for b in batches]), np.arange(N) / FPS, atol=1e-9)
    # earlier batches are not overwritten by later ones, and match the source frames
    one, _, _, _ = _all(gen["face"], batch_size=N)
    assert np.array_equal(rgb, one)
    assert max(_mad(a, b) for a, b in zip(rgb, _source())) < 4


def test_vfr_timestamps_are_the_true_ones(gen):
    info = probe(gen["vfr"])
    total = N / 2 * (1 / 30 + 1 / 15)  # 1.5 s
    assert info.fps_nominal == pytest.approx(30)
    assert info.fps_avg == pytest.approx(N / total, rel=0.05)  # 20, not 30
    rgb, t, idx, _ = _all(gen["vfr"])
    assert len(rgb) == N
    assert np.allclose(t, gen["vfr_ts"], atol=1e-6)
    assert np.array_equal(idx, np.arange(N))


def test_fps_sampling_by_timestamp_cfr(gen):
    _, t, idx, _ = _all(gen["face"], fps=5)
    assert np.allclose(t, [0, 0.2, 0.4, 0.6, 0.8, 1.0], atol=1e-6)
    assert list(idx) == [0, 5, 10, 15, 20, 25]
    _, t, _, _ = _all(gen["face"], fps=7)
    # ticks 0, 1/7 ... 8/7: the first frame at or after each (grid from the first frame, no drift)
    assert np.allclose(t, [0, 0.16, 0.32, 0.44, 0.6, 0.72, 0.88, 1.0, 1.16], atol=1e-6)
    assert len(_all(gen["face"], fps=FPS)[1]) == N  # nominal rate: every frame
    assert len(_all(gen["face"], fps=100)[1]) == N  # faster than the video: no duplicates
    assert list(_all(gen["face"], fps=0.5)[2]) == [0]


@pytest.mark.parametrize("rate", [5, 7, 12])
def test_fps_sampling_by_timestamp_vfr(gen, rate):
    ts = np.asarray(gen["vfr_ts"])
    # for every tick k/rate, the first frame at or after it (a frame kept at most once)
    expect = sorted({int(np.argmax(ts >= k / rate - 1e-6)) for k in range(int(ts[-1] * rate) + 1)})
    _, t, idx, _ = _all(gen["vfr"], fps=rate)
    assert list(idx) == expect
    assert np.allclose(t, ts[expect], atol=1e-6)
    if rate == 5:
        assert np.allclose(t, np.arange(len(t)) * 0.2, atol=1e-6)


def test_bad_arguments_raise_value_error(gen):
    for kw in (dict(batch_size=0), dict(fps=0), dict(fps=-5), dict(max_side=-1)):
        with pytest.raises(ValueError):
            next(iter_frames(gen["face"], **kw))
    assert next(iter_frames(gen["face"], max_side=0)).scale == 1.0  # 0, like None: no downscaling


def test_max_side_downscales(gen):
    b = next(iter_frames(gen["face"], max_side=160, batch_size=N))
    assert b.rgb.shape == (N, 120, 160, 3) and b.scale == pytest.approx(0.5)
    import cv2
    ref = [cv2.resize(f, (160, 120), interpolation=cv2.INTER_AREA) for f in _source()]
    assert max(_mad(a, r) for a, r in zip(b.rgb, ref)) < 5
    b = next(iter_frames(gen["face"], max_side=1000))
    assert b.rgb.shape[1:3] == (H, W) and b.scale == 1.0  # never upscales
    b = next(iter_frames(gen["face"], max_side=100))  # 100 x 75
    assert b.rgb.shape[1:3] == (75, 100) and b.scale == pytest.approx(100 / W)


def test_still_image(gen):
    info = probe(gen["image"])
    assert (info.kind, info.width, info.height, info.n_frames) == ("image", W, H, 1)
    (b,) = list(iter_frames(gen["image"], max_side=160))
    assert b.rgb.shape == (1, 120, 160, 3) and list(b.t_sec) == [0.0] and b.scale == pytest.approx(0.5)
    assert _mad(next(iter_frames(gen["image"])).rgb[0], mediagen.face_image((W, H))) < 1


def test_frames_folder(gen):
    folder = gen["folder"]  # 1.png ... 12.png: natural order, not 1, 10, 11, 12, 2 ...
    info = probe(folder, frame_rate=10)
    assert (info.kind, info.n_frames, info.width, info.height) == ("frames", 12, W, H)
    assert info.fps_nominal == 10 and info.duration_sec == pytest.approx(1.2)
    batches = list(iter_frames(folder, batch_size=5, frame_rate=10))
    assert [len(b.rgb) for b in batches] == [5, 5, 2]
    rgb = np.concatenate([b.rgb for b in batches])
    assert np.allclose(np.concatenate([b.t_sec for b in batches]), np.arange(12) / 10)
    assert max(_mad(a, s) for a, s in zip(rgb, _source(12))) < 1  # lossless png, right order
    _, t, idx, _ = _all(folder, frame_rate=10, fps=5)
    assert list(idx) == [0, 2, 4, 6, 8, 10] and np.allclose(t, idx / 10)
    _, t, _, _ = _all(folder)  # default frame rate
    assert t[1] == pytest.approx(1 / media.DEFAULT_FRAME_RATE)


@pytest.mark.parametrize("name,layout", [("frag.mp4", "fragmented"), ("fast.mp4", "faststart"),
                                         ("cut.mkv", None)])
def test_truncated_file_yields_prefix_and_warns(tmp_path, name, layout):
    """MP4: the demuxer flags the cut packet; Matroska ends quietly, short of its DURATION tag."""
    kw = dict(mp4_layout=layout) if layout else {}
    p = mediagen.truncated_video(tmp_path / name, n_frames=50, fraction=0.5, **kw)
    warnings: list[str] = []
    rgb, t, idx, _ = _all(p, warnings=warnings, batch_size=8)
    assert 5 < len(rgb) < 50
    # fragmented mp4 has no edit list: video starts at the B-frame delay (0.08 s) after the audio
    assert t[0] < 0.1 and np.allclose(t - t[0], np.arange(len(t)) / 25, atol=2e-3)  # mkv: 1 ms
    assert max(_mad(a, s) for a, s in zip(rgb, _source(len(rgb)))) < 6  # real frames, not garbage
    assert len(warnings) == 1 and "truncated" in warnings[0] and "\n" not in warnings[0]
    assert len(_all(p)[0]) == len(rgb)  # without a warnings list: same prefix, still no exception


def _garbled(tmp_path):
    """A 50-frame MP4 with garbage over two spots of its mdat."""
    p = mediagen.face_video(tmp_path / "full.mp4", n_frames=50, gop=10, audio=None,
                            extra_args=["-movflags", "+faststart"])
    data = bytearray(p.read_bytes())
    rng = np.random.default_rng(0)
    for frac in (0.4, 0.6):
        off = int(len(data) * frac)
        data[off:off + 3000] = rng.integers(0, 256, 3000, dtype=np.uint8).tobytes()
    q = tmp_path / "garbled.mp4"
    q.write_bytes(bytes(data))
    return q


def test_garbled_middle_keeps_going(tmp_path):
    """Garbage over two spots of the mdat: no exception; broken frames are dropped with a warning."""
    q = _garbled(tmp_path)
    warnings: list[str] = []
    rgb, t, idx, _ = _all(q, warnings=warnings)
    assert 40 <= len(t) <= 50 and np.all(np.diff(t) > 0) and np.all(np.diff(idx) == 1)
    assert len(warnings) == (0 if len(t) == 50 else 1)


def test_truncated_before_first_frame_raises(tmp_path):
    p = mediagen.truncated_video(tmp_path / "tiny.mp4", fraction=0.02, mp4_layout="faststart", audio=None)
    warnings: list[str] = []
    with pytest.raises(MediaError) as ei:
        list(iter_frames(p, warnings=warnings))
    assert "decod" in _one_line(ei.value, p)


# ---------------------------------------------------------------- read_audio
def test_read_audio_16k_mono_float32(gen):
    samples, start = read_audio(gen["face"])
    assert samples.dtype == np.float32 and samples.ndim == 1
    assert abs(len(samples) - N / FPS * 16000) <= AAC_FRAME_16K
    assert start == pytest.approx(0.0, abs=0.03)
    assert np.abs(samples).max() <= 1.0
    mid = samples[len(samples) // 4: 3 * len(samples) // 4]
    assert np.sqrt(np.mean(mid ** 2)) == pytest.approx(0.5 / np.sqrt(2), rel=0.05)  # 440 Hz at -6 dBFS
    wav, start = read_audio(gen["wav"])
    assert abs(len(wav) - 16000) <= 1 and start == 0.0


def test_read_audio_downmix_is_channel_mean(tmp_path):
    rng = np.random.default_rng(1)
    n = 16000
    t = np.arange(n) / 16000
    left = np.round(0.5 * np.sin(2 * np.pi * 440 * t) * 32767).astype(np.int16)
    right = np.round(0.3 * rng.standard_normal(n).clip(-3, 3) / 3 * 32767).astype(np.int16)
    p = mediagen.write_wav(tmp_path / "lr16k.wav", np.stack([left, right], 1), rate=16000)
    samples, start = read_audio(p)
    assert len(samples) == n and start == 0.0
    expect = (left.astype(np.float64) + right) / 2 / 32768
    assert np.abs(samples - expect).max() < 1e-4
    # resampled too (44.1 kHz): tone left, silence right -> half the tone, not 1/sqrt(2) of it
    n = 44100
    tone = mediagen.make_audio("tone", 1.0, 44100, 1)[:, 0]
    p = mediagen.write_wav(tmp_path / "l44k.wav", np.stack([tone, np.zeros_like(tone)], 1), rate=44100)
    samples, _ = read_audio(p)
    assert abs(len(samples) - 16000) <= 2
    rms = np.sqrt(np.mean(samples[1000:-1000] ** 2))
    assert rms == pytest.approx(0.25 / np.sqrt(2), rel=0.02)


def test_read_audio_start_sec_shares_the_video_clock(clips, tmp_path):
    p = tmp_path / "late_audio.mkv"
    src = clips["face2"]  # mkv, 12 frames at 10 fps, pcm audio
    _ffmpeg("-i", src, "-itsoffset", "0.5", "-i", src, "-map", "0:v", "-map", "1:a", "-c", "copy", p)
    samples, start = read_audio(p)
    assert start == pytest.approx(0.5, abs=0.002)
    assert abs(len(samples) - 1.2 * 16000) <= 2
    _, t, _, _ = _all(p)
    assert t[0] == pytest.approx(0.0, abs=0.002)


def test_read_audio_without_audio_raises(gen):
    for p in (gen["silent"], gen["image"]):
        with pytest.raises(MediaError) as ei:
            read_audio(p)
        assert "no audio" in _one_line(ei.value, p)


# ---------------------------------------------------------------- bad input
def _bad(gen, bad_files, name):
    d = gen["dir"]
    if name == "missing":
        return d / "does_not_exist.mp4"
    if name in bad_files:
        return bad_files[name]
    if name == "unreadable":
        p = mediagen.face_video(d / "locked.mp4", n_frames=3, audio=None)
        os.chmod(p, 0)
        if os.access(p, os.R_OK):  # root reads anything
            pytest.skip("running as a user who can read a chmod 000 file")
        return p
    raise KeyError(name)


@pytest.mark.parametrize("name,cause", [
    ("missing", "no such file"), ("zero", "empty"), ("text", "text"), ("nomoov", "moov"),
    ("unreadable", "permission"),
])
@pytest.mark.parametrize("fn", ["probe", "iter_frames", "read_audio"])
def test_bad_input_raises_one_line_media_error(gen, bad_files, name, cause, fn):
    p = _bad(gen, bad_files, name)
    call = {"probe": probe, "iter_frames": lambda q: list(iter_frames(q)), "read_audio": read_audio}[fn]
    with pytest.raises(MediaError) as ei:
        call(p)
    assert cause in _one_line(ei.value, p).lower()  # the cause, not the file name ("nomoov.mp4")


def test_permission_denied_names_the_cause(gen, monkeypatch):
    """The chmod-000 case above skips as root; check the message with os.access patched instead."""
    p = gen["face"]
    real = os.access
    monkeypatch.setattr(media.os, "access", lambda q, mode: False if str(q) == str(p) else real(q, mode))
    for call in (probe, read_audio):
        with pytest.raises(MediaError) as ei:
            call(p)
        assert "permission denied" in _one_line(ei.value, p)


def test_audio_only_file_given_to_iter_frames(gen):
    for p in (gen["m4a"], gen["wav"]):
        with pytest.raises(MediaError) as ei:
            next(iter_frames(p))
        assert "no video stream" in _one_line(ei.value, p)


def test_folder_without_frames(gen, tmp_path):
    with pytest.raises(MediaError) as ei:
        probe(tmp_path)
    assert "no image frames" in _one_line(ei.value, tmp_path)


def test_media_error_is_one_line():
    e = MediaError(Path("/x/y.mp4"), "first line\nsecond\tline  ")
    assert str(e) == "/x/y.mp4: first line second line" and e.cause == "first line second line"


# ---------------------------------------------------------------- prefetch
def test_prefetch_order_and_errors():
    assert list(prefetch(iter(range(50)), depth=2)) == list(range(50))

    def boom():
        yield 1
        raise RuntimeError("decoder died")

    got = []
    with pytest.raises(RuntimeError, match="decoder died"):
        for x in prefetch(boom()):
            got.append(x)
    assert got == [1]


def test_prefetch_stops_and_closes_source_when_consumer_quits():
    closed = threading.Event()

    def source():
        try:
            for i in range(1000):
                yield i
        finally:
            closed.set()

    before = threading.active_count()
    it = prefetch(source(), depth=2)
    assert next(it) == 0
    it.close()
    assert closed.wait(5), "the source iterator was not closed"
    deadline = time.monotonic() + 5
    while threading.active_count() > before and time.monotonic() < deadline:
        time.sleep(0.01)
    assert threading.active_count() <= before

    def short():  # ends while the queue is full and nobody reads: must not leave a thread behind
        yield from range(2)

    before = threading.active_count()
    it = prefetch(short(), depth=1)
    assert next(it) == 0
    time.sleep(0.3)
    it.close()
    deadline = time.monotonic() + 5
    while threading.active_count() > before and time.monotonic() < deadline:
        time.sleep(0.01)
    assert threading.active_count() <= before


def test_prefetch_iter_frames(gen):
    batches = list(prefetch(iter_frames(gen["face"], batch_size=8)))
    assert sum(len(b.rgb) for b in batches) == N


# ---------------------------------------------------------------- real data
@pytest.mark.realdata
def test_real_grid_mpeg1(shared_data):
    clips = sorted((shared_data / "videos" / "grid").glob("*.mpg"))
    assert len(clips) >= 10
    for p in clips:
        info = probe(p)
        assert info.n_frames is None, p  # MPEG-1 stores no frame count
        assert (info.video_codec, info.width, info.height) == ("mpeg1video", 360, 288)
        assert info.fps_nominal == pytest.approx(25)
        _, t, idx, _ = _all(p, max_side=90, batch_size=40)
        assert len(t) == 75 and t[0] == 0.0 and t[-1] == 2.96, p
        assert np.allclose(np.diff(t), 0.04)
    samples, start = read_audio(clips[0])
    assert abs(len(samples) - info.duration_sec * 16000) <= 16000 * 0.03 and abs(start) < 0.03


@pytest.mark.realdata
def test_real_vfr_face_1(shared_data):
    p = shared_data / "videos" / "videoretalking" / "face_1.mp4"
    info = probe(p)
    assert info.fps_nominal == pytest.approx(30) and info.fps_avg == pytest.approx(22, abs=0.5)
    warnings: list[str] = []
    _, t, _, _ = _all(p, max_side=128, warnings=warnings)
    assert len(t) == 135 and np.all(np.diff(t) > 0) and not warnings
    assert (len(t) - 1) / (t[-1] - t[0]) == pytest.approx(22, abs=0.5)
    assert set(np.round(np.diff(t) * 30).astype(int)) <= {1, 2, 3}  # gaps of 1/30 or 1/15 s


@pytest.mark.realdata
def test_real_hamilton_275_frames(shared_data):
    p = shared_data / "videos" / "hamilton_multiface.mp4"
    info = probe(p)
    assert (info.width, info.height) == (640, 360)
    warnings: list[str] = []
    _, t, idx, _ = _all(p, max_side=160, warnings=warnings)
    assert len(t) == 275 and not warnings  # not the 300 that `ffmpeg -r` pads to
    assert np.all(np.diff(t) > 0)
    assert t[0] == pytest.approx(0.844, abs=0.01)  # the video track starts late; audio at 0
    assert t[-1] == pytest.approx(info.duration_sec - 1 / 29.97, abs=0.02)


@pytest.mark.realdata
def test_real_crowd_1080p_probe(shared_data):
    info = probe(shared_data / "videos" / "crowd_1080p.mp4")
    assert (info.width, info.height, info.rotation) == (1920, 1080, 0)
    assert info.fps_nominal == pytest.approx(25) and info.n_frames == 105


def test_prefetch_close_waits_for_the_item_in_progress():
    """close() returns only when the worker is done: an item being computed (a batch being detected
    or followed, whose stage state the next video resets) never runs on after the consumer moved on."""
    started, finished = threading.Event(), threading.Event()

    def source():
        yield 0
        started.set()
        time.sleep(0.5)  # the consumer stops while this item is being made
        finished.set()
        yield 1

    it = prefetch(source(), depth=1)
    assert next(it) == 0
    assert started.wait(5)
    it.close()
    assert finished.is_set()
    assert not any(t.name == "facekit-prefetch" and t.is_alive() for t in threading.enumerate())


def test_damaged_video_decodes_the_same_whatever_the_threads(tmp_path, monkeypatch):
    """FFmpeg conceals damage differently with different frame-thread counts: the decoder gets a
    fixed count (DECODE_THREADS), so a broken video gives the same frames with any FACEKIT_THREADS
    (--workers share) and on any machine."""
    q = _garbled(tmp_path)
    got = []
    for threads in ("1", "3"):
        monkeypatch.setenv("FACEKIT_THREADS", threads)
        got.append(_all(q, warnings=[])[0])
    assert got[0].shape == got[1].shape and np.array_equal(got[0], got[1])
