"""The store: atomic shards, index rebuild, the reader, crash leftovers, concurrent runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zlib
from pathlib import Path

import h5py
import numpy as np
import pytest

import facekit
from facekit import store


def _write(out, key, n=3, status="done"):
    w = store.VideoWriter(out, key)
    w.create("frames/t", dtype="f8")
    w.append("frames/t", np.arange(n) / 10)
    w.create("faces/frame", dtype="i8")
    w.create("faces/box", (4,), "f4")
    w.append("faces/frame", np.arange(n))
    w.append("faces/box", np.ones((n, 4), np.float32))
    return w, w.commit({"status": status, "n_frames": n, "n_faces": n, "stages": ["detect"]})


def test_writer_is_atomic_and_abort_leaves_nothing(tmp_path):
    out = tmp_path / "s.h5"
    store.check_writable(out)
    w = store.VideoWriter(out, "a/b.mp4")
    assert w.tmp.exists() and not w.final.exists()
    w.abort()
    assert not w.tmp.exists() and not w.final.exists()
    _, final = _write(out, "a/b.mp4")
    assert final.exists() and [p for p in final.parent.iterdir() if p.name.endswith(".tmp")] == []


def test_reader_sees_shards_without_index_and_index_rebuild(tmp_path):
    out = tmp_path / "s.h5"
    store.check_writable(out)
    _write(out, "x.mp4")
    _write(out, "dir/y.mp4", n=5)
    # no index yet (as after a crash): the reader scans the shards directory
    with facekit.open(out) as st:
        assert sorted(st) == ["dir/y.mp4", "x.mp4"]
        assert len(st["dir/y.mp4"].frames) == 5
        assert st["x.mp4"].faces.in_frame(1)["box"].shape == (1, 4)
    rows = store.rebuild_index(out, {"command": "test"})
    assert [r.key for r in rows] == ["dir/y.mp4", "x.mp4"]
    with h5py.File(out, "r") as f:
        assert f.attrs["command"] == "test" and f.attrs["kind"] == "index"
        assert f["videos/dir/y.mp4/frames/t"].shape == (5,)
    # a shard finished after the index was built is still visible
    _write(out, "z.mp4")
    with facekit.open(out) as st:
        assert "z.mp4" in st
    # the shards directory and a single shard open too
    assert len(facekit.open(store.shards_dir(out))) == 3
    one = facekit.open(store.shards_dir(out) / store.shard_name("x.mp4"))
    assert list(one) == ["x.mp4"]


def test_stale_temporary_shards_are_cleaned(tmp_path):
    out = tmp_path / "s.h5"
    store.check_writable(out)
    d = store.shards_dir(out)
    import socket

    host = socket.gethostname().replace(".", "_")
    dead = d / f".abc.h5.{host}.999999999.dead{store.TMP_SUFFIX}"
    alive = d / f".def.h5.{host}.{os.getpid()}.live{store.TMP_SUFFIX}"
    dead.write_bytes(b"x")
    alive.write_bytes(b"x")
    assert store.clean_stale_temps(out) == 1
    assert not dead.exists() and alive.exists()


def test_not_a_store_is_a_clear_error(tmp_path):
    with pytest.raises(store.StoreError, match="no such facekit store"):
        facekit.open(tmp_path / "nothing.h5")
    p = tmp_path / "plain.h5"
    with h5py.File(p, "w") as f:
        f["x"] = 1
    with pytest.raises(store.StoreError, match="not a facekit store"):
        facekit.open(p)
    d = tmp_path / "isdir.h5"
    d.mkdir()
    with pytest.raises(store.StoreError, match="is a directory"):
        store.check_writable(d)


def test_attrs_roundtrip():
    assert store.from_attr(store.to_attr({"a": [1, 2]})) == {"a": [1, 2]}
    assert store.from_attr(store.to_attr(None)) is None
    assert store.from_attr(np.int64(3)) == 3


@pytest.mark.slow
def test_two_concurrent_runs_into_one_store(clips, tmp_path):
    out = tmp_path / "feats.h5"
    inputs = [str(clips["face"]), str(clips["face2"]), str(clips["silent"])]
    cmd = [sys.executable, "-m", "facekit", "extract", *inputs, "-o", str(out), "-q", "--json"]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    with facekit.open(out) as st:
        assert sorted(st) == ["face.mp4", "silent.mp4", "sub/face2.mkv"]
        assert all(st[k].status == "done" for k in st)
    with h5py.File(out, "r") as f:
        assert sorted(f["index/key"].asstr()[()]) == ["face.mp4", "silent.mp4", "sub/face2.mkv"]
    assert [p.name for p in store.shards_dir(out).iterdir() if p.name.endswith(".tmp")] == []


@pytest.mark.parametrize("level", [None, 1])
def test_gzip_rows_compressed_in_background_read_back_equal(tmp_path, level):
    """Appends of any size to a gzip dataset (compressed a chunk at a time off the caller's thread,
    written with write_direct_chunk, at the dataset's level) read back as the same rows, as an
    ordinary gzip dataset; reading the group mid-way (a flush at a partial chunk) and appending
    again keeps them in order."""
    out = tmp_path / "s.h5"
    store.check_writable(out)
    rng = np.random.default_rng(1)
    w = store.VideoWriter(out, "v.mp4")
    w.create("faces/crop", (8, 8, 3), "u1", compression="gzip", chunk_rows=16, compression_opts=level)
    w.create("faces/plain", (2,), "f4")
    assert "faces/crop" in w._compressors and "faces/plain" not in w._compressors
    rows = [rng.integers(0, 255, (n, 8, 8, 3), dtype=np.uint8) for n in (5, 16, 40, 0, 3, 1, 33)]
    want = np.concatenate(rows)
    for i, r in enumerate([r.copy() for r in rows]):
        w.append("faces/crop", r)
        w.append("faces/plain", np.full((len(r), 2), i, np.float32))
        if i == 2:  # a stage reading the store mid-way sees every row so far
            assert w.group["faces/crop"].shape[0] == 61
            assert np.array_equal(w.group["faces/crop"][()], np.concatenate(rows[:3]))
        r[...] = 0  # the caller reusing its array must not change what was written
    final = w.commit({"status": "done", "n_frames": 0, "n_faces": 0, "stages": ["crop"]})
    with h5py.File(final, "r") as f:
        ds = f["videos/v.mp4/faces/crop"]
        assert ds.compression == "gzip" and ds.chunks == (16, 8, 8, 3)
        assert ds.compression_opts == (level or store.GZIP_LEVEL)
        # a chunk compressed in the background is one zlib stream of its rows
        _, raw = ds.id.read_direct_chunk((16, 0, 0, 0))
        assert zlib.decompress(raw) == want[16:32].tobytes()
        assert np.array_equal(ds[()], want)
        assert np.array_equal(f["videos/v.mp4/faces/plain"][:, 0], np.repeat(np.arange(7), [len(r) for r in rows]))


@pytest.mark.parametrize("codec", ["isal", "zlib"])
def test_background_chunks_read_back_with_either_codec(tmp_path, monkeypatch, codec):
    """ISA-L (python-isal, a requirement) or, without it, zlib at the dataset's level: either way
    HDF5's gzip filter reads the chunks back as written."""
    if codec == "zlib":
        monkeypatch.setattr(store, "_isal_zlib", None)
    else:
        assert store._isal_zlib is not None
    out = tmp_path / "s.h5"
    store.check_writable(out)
    rows = np.random.default_rng(2).integers(0, 255, (40, 8, 8, 3), dtype=np.uint8)
    w = store.VideoWriter(out, "v.mp4")
    w.create("faces/crop", (8, 8, 3), "u1", compression="gzip", chunk_rows=8, compression_opts=1)
    w.append("faces/crop", rows)
    final = w.commit({"status": "done", "n_frames": 0, "n_faces": 0, "stages": ["crop"]})
    with h5py.File(final, "r") as f:
        assert np.array_equal(f["videos/v.mp4/faces/crop"][()], rows)


def test_gzip_append_checks_shape_and_bounds_memory(tmp_path, monkeypatch):
    out = tmp_path / "s.h5"
    store.check_writable(out)
    w = store.VideoWriter(out, "v.mp4")
    w.create("faces/crop", (8, 8, 3), "u1", compression="gzip", chunk_rows=4)
    with pytest.raises(ValueError, match="do not fit"):
        w.append("faces/crop", np.zeros((4, 3, 8, 8), np.uint8))  # channels first: refused, as h5py would
    comp = w._compressors["faces/crop"]
    seen = []
    real = comp._write_oldest
    monkeypatch.setattr(comp, "_write_oldest", lambda: seen.append(len(comp.in_flight)) or real())
    import threading
    gate = threading.Event()  # compression blocked: chunks pile up until the back-pressure limit
    monkeypatch.setattr(comp, "pool", type("P", (), {"submit": lambda self, f, *a: w._pool.submit(
        lambda: gate.wait() and f(*a))})())
    threading.Timer(0.5, gate.set).start()
    for i in range(20):
        w.append("faces/crop", np.full((8, 8, 8, 3), i, np.uint8))
        assert len(comp.in_flight) <= store.MAX_CHUNKS_IN_FLIGHT
    final = w.commit({"status": "done", "n_frames": 0, "n_faces": 0, "stages": ["crop"]})
    assert seen and max(seen) <= store.MAX_CHUNKS_IN_FLIGHT + 2  # (an append of 8 rows adds 2 chunks)
    with h5py.File(final, "r") as f:
        got = f["videos/v.mp4/faces/crop"][()]
    assert np.array_equal(got[:, 0, 0, 0], np.repeat(np.arange(20), 8))
