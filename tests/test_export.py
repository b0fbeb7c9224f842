"""Reader clocks (Video.stream, AudioStream.at) and `facekit export`."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

import facekit
from facekit import clock
from facekit.export import ExportError, export


@pytest.fixture(scope="module")
def store(clips, bad_files, tmp_path_factory):
    out = tmp_path_factory.mktemp("exp") / "feats.h5"
    facekit.extract([str(clips["face"]), str(clips["silent"]), str(bad_files["text"])], out,
                    stages="detect,track,landmarks,mel", progress=False)
    return out


def _keys(store):
    with facekit.open(store) as st:
        return {k.rsplit("/", 1)[-1]: k for k in st}


def test_reader_puts_streams_on_the_video_clock(store):
    k = _keys(store)["face.mp4"]
    with facekit.open(store) as st:
        v = st[k]
        mel = v.audio["mel"]
        data, t = v.stream("mel", clock="video", method="mean")
        np.testing.assert_array_equal(t, v.frames.t)
        np.testing.assert_allclose(data, clock.resample(mel.data, mel.t, v.frames.t, "mean"))
        np.testing.assert_allclose(mel.at(v.frames.t, "nearest"), v.stream("mel")[0])
        assert data.shape == (len(v.frames), 80) and not np.isnan(data).any()
        lm, t2 = v.stream("faces/landmarks")  # one face per frame: the primary track's
        assert lm.shape == (len(v.frames), 68, 2)
        rows = v.faces.rows_per_frame("primary", v.tracks)
        np.testing.assert_array_equal(lm[rows >= 0], v.faces.landmarks[rows[rows >= 0]])
        box_on_mel, tm = v.stream("faces/box", clock="mel", method="nearest")
        assert box_on_mel.shape == (len(mel), 4)
        np.testing.assert_array_equal(tm, mel.t)
        native, tn = v.stream("faces/box", clock="native")
        np.testing.assert_array_equal(native, v.faces.box)
        np.testing.assert_array_equal(tn, v.frames.t[v.faces.frame])


def test_export_npy_on_the_video_clock(store, tmp_path):
    m = export(store, tmp_path / "x", method="mean", progress=False)
    keys = _keys(store)
    assert set(m["videos"]) == {keys["face.mp4"], keys["silent.mp4"]} and list(m["failed"]) == [keys["text.mp4"]]
    with facekit.open(store) as st:
        for key in m["videos"]:
            v = st[key]
            d = tmp_path / "x" / key
            np.testing.assert_array_equal(np.load(d / "t.npy"), v.frames.t)
            np.testing.assert_array_equal(np.load(d / "frame.npy"), v.frames.index)
            np.testing.assert_array_equal(np.load(d / "mel.npy"), v.stream("mel", method="mean")[0])
            assert m["videos"][key]["rows"] == len(v.frames)
        silent = np.load(tmp_path / "x" / keys["silent.mp4"] / "mel.npy")
        assert silent.shape == (10, 80) and np.isnan(silent).all()  # no audio: no data, one row per frame
        lm = np.load(tmp_path / "x" / keys["face.mp4"] / "faces.landmarks.npy")
        assert lm.shape == (20, 68, 2)
    assert not (tmp_path / "x" / keys["face.mp4"] / "faces.crop.npy").exists()
    assert json.loads((tmp_path / "x" / "manifest.json").read_text())["method"] == "mean"


def test_export_csv_matches_npy(store, tmp_path):
    key = _keys(store)["face.mp4"]
    export(store, tmp_path / "n", streams="mel,faces.box", progress=False)
    export(store, tmp_path / "c", format="csv", streams=["mel", "faces.box"], progress=False)
    lines = (tmp_path / "c" / key / "faces.box.csv").read_text().splitlines()
    assert lines[0] == "t,frame,faces.box_0,faces.box_1,faces.box_2,faces.box_3" and len(lines) == 21
    table = np.loadtxt(tmp_path / "c" / key / "mel.csv", delimiter=",", skiprows=1)
    np.testing.assert_allclose(table[:, 0], np.load(tmp_path / "n" / key / "t.npy"), atol=1e-6)
    np.testing.assert_allclose(table[:, 2:], np.load(tmp_path / "n" / key / "mel.npy"), rtol=1e-6, atol=1e-4)
    assert sorted(p.name for p in (tmp_path / "c" / key).iterdir()) == ["faces.box.csv", "mel.csv"]


def test_export_native_and_audio_clocks(store, tmp_path):
    key = _keys(store)["face.mp4"]
    export(store, tmp_path / "raw", clock="native", progress=False)
    export(store, tmp_path / "onmel", clock="mel", streams="faces.box", progress=False)
    with facekit.open(store) as st:
        v = st[key]
        np.testing.assert_array_equal(np.load(tmp_path / "raw" / key / "mel.npy"), v.audio["mel"].data)
        np.testing.assert_array_equal(np.load(tmp_path / "raw" / key / "mel.t.npy"), v.audio["mel"].t)
        np.testing.assert_array_equal(np.load(tmp_path / "raw" / key / "faces.track.npy"), v.faces.track)
        onmel = np.load(tmp_path / "onmel" / key / "faces.box.npy")
        assert onmel.shape == (len(v.audio["mel"]), 4)
        np.testing.assert_array_equal(np.load(tmp_path / "onmel" / key / "t.npy"), v.audio["mel"].t)


def test_export_refuses_typos(store, tmp_path):
    with pytest.raises(ExportError, match="unknown stream 'mell'"):
        export(store, tmp_path / "e", streams="mell", progress=False)
    with pytest.raises(ExportError, match="unknown clock"):
        export(store, tmp_path / "e", clock="vggish", progress=False)
    with pytest.raises(ExportError, match="cannot read"):
        export(tmp_path / "nothing.h5", tmp_path / "e", progress=False)


def test_export_cli(store, tmp_path):
    run = lambda *a: subprocess.run([sys.executable, "-m", "facekit", "export", str(store), *a],  # noqa: E731
                                    capture_output=True, text=True)
    r = run("--to", str(tmp_path / "o"), "--json", "--streams", "mel")
    assert r.returncode == 1, r.stderr  # the store holds a failed video: it is named, exit 1
    assert "text.mp4: not exported (failed video" in r.stderr
    assert json.loads(r.stdout)["format"] == "npy"
    r = run("--to", str(tmp_path / "o"), "--clock", "nope")
    assert r.returncode == 2 and r.stderr.startswith("facekit: error: unknown clock") and "Traceback" not in r.stderr


def test_audio_in_any_rate_and_channel_count(tmp_path):
    import mediagen

    files = [mediagen.audio_only(tmp_path / "a8k.wav", duration=1.0, rate=8000, channels=1),
             mediagen.audio_only(tmp_path / "b48k6.wav", duration=1.0, rate=48000, channels=6),
             mediagen.audio_only(tmp_path / "c22k.flac", duration=1.0, rate=22050, channels=2),
             mediagen.audio_only(tmp_path / "d_silence.wav", duration=1.0, audio="silence")]
    s = facekit.extract([str(f) for f in files], tmp_path / "a.h5", stages="mel", progress=False)
    assert s.ok, s.to_dict()
    with facekit.open(tmp_path / "a.h5") as st:
        for k in st:
            mel = st[k].audio["mel"]
            assert abs(len(mel) - 101) <= 1, (k, len(mel))  # 1 s at 16 kHz: 1 + 16000 // 160
            assert np.isfinite(mel.data).all() and mel.attrs["audio_status"] == "ok"
        assert st["d_silence.wav"].audio["mel"].data.max() == pytest.approx(-100.0)  # the log floor


def test_export_of_a_store_without_tracks_uses_the_largest_face(clips, tmp_path):
    out = tmp_path / "d.h5"
    facekit.extract([str(clips["face"])], out, stages="detect", progress=False)
    m = export(out, tmp_path / "x", progress=False)
    entry = m["videos"]["face.mp4"]
    assert entry["faces"].startswith("largest") and entry["faces.box"] == [20, 4]
    with facekit.open(out) as st:
        rows = st["face.mp4"].faces.rows_per_frame("largest")
        np.testing.assert_array_equal(np.load(tmp_path / "x" / "face.mp4" / "faces.box.npy")[rows >= 0],
                                      st["face.mp4"].faces.box[rows[rows >= 0]])
