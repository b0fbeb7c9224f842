"""`facekit verify`: a whole store passes; each kind of damage is reported as one line, exit code 1."""

from __future__ import annotations

import json
import os
import socket

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

import facekit
from facekit import store
from facekit.cli import main
from facekit.verify import verify

ALL_STAGES = ("detect", "track", "landmarks", "align", "pose", "crop", "mel")


def make_video(out, key, F=6, N=5, stages=ALL_STAGES, crop_store=True, status="done", error="", skip=(),
               commit=True, **overrides):
    """A consistent synthetic video group (what the stages would write), minus the paths in ``skip``;
    ``overrides`` replace datasets by path (``faces/score=np.zeros(3)``)."""
    rng = np.random.default_rng(0)
    store.check_writable(out)
    w = store.VideoWriter(out, key)
    data = {}
    if status == "done":
        frame = np.sort(rng.integers(0, F, N)).astype(np.int64)
        data = {
            "frames/t": np.arange(F) / 25.0, "frames/index": np.arange(F, dtype=np.int64),
            "frames/shot": np.zeros(F, np.int32),
            "faces/frame": frame, "faces/box": rng.random((N, 4), np.float32),
            "faces/score": rng.random(N, np.float32), "faces/kps5": rng.random((N, 5, 2), np.float32),
            "faces/track": np.zeros(N, np.int64), "faces/landmarks": rng.random((N, 68, 2), np.float32),
            "faces/affine": rng.random((N, 2, 3), np.float32), "faces/pose": rng.random((N, 3), np.float32),
            "faces/crop": rng.integers(0, 255, (N, 8, 8, 3), np.uint8),
            "tracks/id": np.array([0]), "tracks/first_frame": np.array([0]),
            "audio/mel/data": rng.random((10, 80), np.float32), "audio/mel/t": np.arange(10) / 100.0,
        }
        if "crop" not in stages or not crop_store:
            data.pop("faces/crop")
        data.update(overrides)
        for path, arr in data.items():
            if path in skip:
                continue
            w.create(path, data=arr, compression="gzip" if path == "faces/crop" else None)
    params = {s: ({"store": crop_store} if s == "crop" else {"p": 1}) for s in stages}
    attrs = {"status": status, "error": error, "stages": list(stages), "stage_params": params}
    if status == "done":
        attrs.update(n_frames=len(data["frames/t"]), n_faces=len(data["faces/frame"]))
    if not commit:
        return w, attrs
    return w.commit(attrs)


def problems(out, **kw):
    return [p["message"] for p in verify(out, **kw)["problems"]]


@pytest.fixture
def good(tmp_path):
    out = tmp_path / "s.h5"
    make_video(out, "a.mp4")
    make_video(out, "dir/b.mkv", stages=("detect", "mel"))
    make_video(out, "c.mp4", crop_store=False)
    make_video(out, "bad.mp4", status="failed", error="not a readable media file")
    store.rebuild_index(out)
    return out


def test_whole_store_passes(good):
    r = verify(good)
    assert r["ok"], r["problems"]
    assert (r["shards"], r["videos"], r["done"], r["failed"]) == (4, 4, 3, 1)
    assert r["problems"] == [] and r["warnings"] == []
    # the shards directory names the same store
    assert verify(store.shards_dir(good))["ok"]


@pytest.mark.parametrize("kw,expect", [
    (dict(skip=("faces/pose",)), "stage pose: dataset faces/pose is missing"),
    (dict(skip=("tracks/id", "tracks/first_frame")), "stage track: group tracks/ is missing"),
    (dict(skip=("audio/mel/t",)), "stage mel: dataset audio/mel/t is missing"),
    (dict(skip=("faces/crop",)), "stage crop: dataset faces/crop is missing"),
    (dict(skip=("frames/t",)), "dataset frames/t is missing"),
    (dict(**{"faces/score": np.zeros(4, np.float32)}), "faces/* lengths differ"),
    (dict(**{"frames/index": np.arange(5)}), "frames/index has 5 rows, frames/t 6"),
    (dict(**{"frames/t": np.array([0, 0.1, 0.1, 0.2, 0.3, 0.4])}), "frames/t is not increasing"),
    (dict(**{"frames/t": np.array([0, 0.1, np.nan, 0.2, 0.3, 0.4])}), "non-finite"),
    (dict(**{"faces/frame": np.array([0, 1, 2, 3, 6])}), "faces/frame holds rows outside [0, 6)"),
    (dict(**{"faces/frame": np.array([0, 2, 1, 3, 4])}), "faces/frame is not non-decreasing"),
    (dict(**{"faces/box": np.zeros((5, 3), np.float32)}), "faces/box has rows of shape (3,)"),
    (dict(**{"audio/mel/t": np.arange(9) / 100.0}), "audio/mel: data has shape (10, 80), t (9,)"),
    (dict(**{"faces/track": np.array([0, 0, 7, 0, 0])}), "faces/track holds ids that tracks/id does not list"),
])
def test_damaged_video_is_reported(tmp_path, kw, expect):
    out = tmp_path / "s.h5"
    make_video(out, "ok.mp4")
    make_video(out, "x.mp4", **kw)
    store.rebuild_index(out)
    r = verify(out)
    assert not r["ok"]
    assert len(r["problems"]) == 1, r["problems"]  # one line per problem, not a cascade
    p = r["problems"][0]
    assert expect in p["message"] and p["key"] == "x.mp4"
    assert "\n" not in p["line"] and p["line"].endswith(p["message"])


def test_crop_not_promised_when_not_stored(tmp_path):
    out = tmp_path / "s.h5"
    make_video(out, "x.mp4", crop_store=False)
    store.rebuild_index(out)
    assert verify(out)["ok"]


def test_status_and_attribute_checks(tmp_path):
    out = tmp_path / "s.h5"
    make_video(out, "nerr.mp4", status="failed", error="")
    make_video(out, "odd.mp4", status="running")
    w, attrs = make_video(out, "count.mp4", commit=False)
    w.commit({**attrs, "n_frames": 99})
    w, attrs = make_video(out, "noparams.mp4", commit=False)
    w.commit({k: v for k, v in attrs.items() if k != "stage_params"})
    make_video(out, "future.mp4", stages=("detect", "some-future-stage"))
    store.rebuild_index(out)
    r = verify(out)
    by_key = {}
    for p in r["problems"]:
        by_key.setdefault(p["key"], []).append(p["message"])
    assert by_key["nerr.mp4"] == ["failed video without an error message"]
    assert "unknown status 'running'" in by_key["odd.mp4"][0]
    assert "n_frames=99" in by_key["count.mp4"][0]
    assert "stage_params" in by_key["noparams.mp4"][0]
    assert "future.mp4" not in by_key  # an unknown stage is a warning, not a problem
    assert any("'some-future-stage' is unknown" in w["message"] for w in r["warnings"])


def test_index_mismatches(good):
    d = store.shards_dir(good)
    assert verify(good)["ok"]
    # a shard finished after the index was written
    make_video(good, "late.mp4")
    assert ["shard" in m and "not in the index" in m for m in problems(good)] == [True]
    store.rebuild_index(good)
    # a shard the index lists is gone
    (d / store.shard_name("late.mp4")).unlink()
    assert ["which does not exist" in m for m in problems(good)] == [True]
    store.rebuild_index(good)
    # a shard replaced after the index was written (status changed): stale entry
    make_video(good, "a.mp4", status="failed", error="boom")
    (msg,) = problems(good)
    assert "stale index entry" in msg and "'done' != 'failed'" in msg
    store.rebuild_index(good)
    assert verify(good)["ok"]
    # a broken external link
    with h5py.File(good, "r+") as f:
        del f["videos/a.mp4"]
    assert ["external link" in m for m in problems(good)] == [True]
    # no index at all, or garbage instead of one
    good.unlink()
    assert ["index file is missing" in m for m in problems(good)] == [True]
    good.write_bytes(b"garbage" * 100)
    assert ["index does not open" in m for m in problems(good)] == [True]


def test_broken_and_misplaced_shards(good):
    d = store.shards_dir(good)
    p = d / store.shard_name("a.mp4")
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    r = verify(good)
    assert [x["message"].startswith("shard does not open") for x in r["problems"]] == [True]
    p.write_bytes(data)
    # a shard under another name: its key and file name disagree (and the index does not list it)
    os.replace(p, d / ("0" * 24 + ".h5"))
    msgs = problems(good)
    assert any("file name does not match its key" in m for m in msgs)
    assert any("which does not exist" in m for m in msgs)


def test_leftover_temporary_files_are_warnings(good):
    host = socket.gethostname().replace(".", "_")
    (store.shards_dir(good) / f".abc.h5.{host}.999999.dead.tmp").write_bytes(b"x")
    (good.parent / f".{good.name}.{host}.999999.dead.tmp").write_bytes(b"x")
    r = verify(good)
    assert r["ok"] and len(r["warnings"]) == 2
    assert all("leftover temporary" in w["message"] for w in r["warnings"])
    # the next run's cleaning removes both (their process is dead)
    assert store.clean_stale_temps(good) == 2
    assert verify(good)["warnings"] == []


def test_damaged_data_block_needs_read_back(tmp_path):
    out = tmp_path / "s.h5"
    make_video(out, "x.mp4", N=40)
    store.rebuild_index(out)
    shard = store.shards_dir(out) / store.shard_name("x.mp4")
    with h5py.File(shard, "r") as f:
        info = f["videos/x.mp4/faces/crop"].id.get_chunk_info(0)
    st = shard.stat()
    with open(shard, "r+b") as fh:  # bit rot: same size, same mtime
        fh.seek(info.byte_offset + 8)
        fh.write(b"\xff" * 32)
    os.utime(shard, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert verify(out, read_data=False)["ok"]
    (msg,) = problems(out)
    assert "dataset faces/crop cannot be read back" in msg


def test_cli_exit_codes_and_output(good, tmp_path):
    r = CliRunner().invoke(main, ["verify", str(good)])
    assert r.exit_code == 0 and r.output.strip().endswith("OK")
    make_video(good, "x.mp4", skip=("faces/pose",))
    make_video(good, "y.mp4", **{"faces/score": np.zeros(2, np.float32)})
    store.rebuild_index(good)
    r = CliRunner().invoke(main, ["verify", str(good)])
    assert r.exit_code == 1
    lines = r.output.strip().splitlines()
    assert [ln.startswith("problem: ") for ln in lines[:-1]] == [True, True]
    assert "x.mp4" in lines[0] + lines[1] and "y.mp4" in lines[0] + lines[1]
    assert lines[-1].endswith("2 problems")
    r = CliRunner().invoke(main, ["verify", str(good), "--json", "--quick"])
    d = json.loads(r.output)
    assert r.exit_code == 1 and d["ok"] is False and len(d["problems"]) == 2
    r = CliRunner().invoke(main, ["verify", str(tmp_path / "nothing.h5")])
    assert r.exit_code == 2 and "no such facekit store" in r.output
    r = CliRunner().invoke(main, ["verify", "--help"])
    assert "Examples:" in r.output and "--quick" in r.output
    assert facekit.verify is verify


def test_real_stores_pass(clips, tmp_path):
    out = tmp_path / "feats.h5"
    s = facekit.extract([clips["face"], clips["silent"]], out, stages="crop,pose,mel", progress=False)
    assert s.ok
    assert verify(out)["ok"], verify(out)["problems"]
    out2 = tmp_path / "nocrops.h5"
    facekit.extract([clips["face"]], out2, stages="crop", crops_in_store=False, progress=False)
    assert verify(out2)["ok"], verify(out2)["problems"]
