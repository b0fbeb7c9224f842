"""Faults (issue 7): the disk fills up or a file grows past its size limit while a shard is written,
the output directory is read-only, the process is SIGKILLed at random points. In every case the
finished shards stay intact (`facekit verify` passes on what is there), the error is one clear line,
and running the same command again completes the store exactly as a clean run would have.

The real disk-full and read-only cases need to mount a tmpfs / a read-only bind mount (root with
CAP_SYS_ADMIN): they skip elsewhere; RLIMIT_FSIZE and the monkeypatched checks run everywhere.
"""

from __future__ import annotations

import errno
import json
import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import facekit
from facekit import engine, store
from facekit.cli import main
from facekit.config import DEFAULT_STAGES

import mediagen

SMALL = (160, 120)
CROP = DEFAULT_STAGES["crop"]  # what `facekit crop` runs


def facekit_exe() -> list[str]:
    exe = Path(sys.executable).parent / "facekit"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "facekit"]


def contents(out) -> dict[str, dict]:
    """key -> status and every array a trainer reads."""
    d = {}
    with facekit.open(out) as st:
        for k in st:
            v = st[k]
            a = {"status": v.status, "frames/t": v.frames.t, "frames/index": v.frames.index}
            for name in v.faces.keys():
                a[f"faces/{name}"] = v.faces[name]
            for name, s in v.audio.items():
                a[f"audio/{name}/data"], a[f"audio/{name}/t"] = s.data, s.t
            d[k] = a
    return d


def assert_same_store(out, want: dict) -> None:
    got = contents(out)
    assert sorted(got) == sorted(want)
    for k in want:
        assert got[k].keys() == want[k].keys(), k
        for name, a in want[k].items():
            if isinstance(a, np.ndarray):
                np.testing.assert_array_equal(got[k][name], a, err_msg=f"{k}: {name}")
            else:
                assert got[k][name] == a, (k, name)


def leftovers(out) -> list[str]:
    out = Path(out)
    d = store.shards_dir(out)
    names = [p.name for p in d.iterdir()] if d.is_dir() else []
    names += [p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]
    return sorted(n for n in names if n.endswith(store.TMP_SUFFIX))


def limited(fsize: int):
    """preexec_fn: files of at most ``fsize`` bytes; SIGXFSZ ignored so writes fail with EFBIG."""
    def pre():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
    return pre


def run(args, preexec_fn=None, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run(facekit_exe() + [str(a) for a in args], capture_output=True, text=True,
                          timeout=timeout, preexec_fn=preexec_fn)


def assert_clean_failure_output(p: subprocess.CompletedProcess) -> None:
    assert p.returncode == 1, p.stderr
    assert p.returncode >= 0  # not killed by a signal (SIGSEGV, SIGXFSZ)
    assert "Traceback" not in p.stderr and "Exception ignored" not in p.stderr
    assert all(ln.startswith("facekit: ") for ln in p.stderr.splitlines()), p.stderr


# ----------------------------------------------------------------------------- disk full

@pytest.fixture(scope="module")
def crop_src(tmp_path_factory):
    """Three short clips and a long one (crops make its shard several times bigger)."""
    d = tmp_path_factory.mktemp("fsrc")
    for i in range(3):
        mediagen.face_video(d / f"v{i}.mp4", n_frames=8, size=SMALL, audio=None)
    mediagen.face_video(d / "long.mp4", n_frames=120, size=SMALL, audio=None)
    return d


@pytest.fixture(scope="module")
def crop_clean(crop_src, tmp_path_factory):
    out = tmp_path_factory.mktemp("fclean") / "clean.h5"
    assert facekit.extract([str(crop_src)], out, stages=CROP, progress=False).ok
    sizes = {}
    with facekit.open(out) as st:
        for r in st.rows():
            sizes[r.key] = (store.shards_dir(out) / r.shard).stat().st_size
    return contents(out), sizes


def test_file_size_limit_while_writing_a_shard(crop_src, crop_clean, tmp_path):
    """RLIMIT_FSIZE between the small shards and the long video's: the long one fails with EFBIG,
    one line; the others are finished and intact; the run without the limit completes the store."""
    want, sizes = crop_clean
    small = max(v for k, v in sizes.items() if k != "long.mp4")
    assert sizes["long.mp4"] > 2 * small
    limit = (small + sizes["long.mp4"]) // 2
    out = tmp_path / "f.h5"
    p = run(["crop", crop_src, "-o", out], preexec_fn=limited(limit))
    assert_clean_failure_output(p)
    errors = [ln for ln in p.stderr.splitlines() if ln.startswith(f"facekit: {crop_src}/")]
    assert errors == [f"facekit: {crop_src}/long.mp4: cannot write the store: File too large (errno 27)"]
    rep = facekit.verify(out)
    assert rep["ok"], rep["problems"]
    assert (rep["done"], rep["failed"]) == (3, 1) and leftovers(out) == []
    with facekit.open(out) as st:
        assert "File too large" in st["long.mp4"].error
    got = contents(out)
    for k in ("v0.mp4", "v1.mp4", "v2.mp4"):
        for name, a in want[k].items():
            if isinstance(a, np.ndarray):
                np.testing.assert_array_equal(got[k][name], a)
    # space is back: the same command resumes (skips the finished ones) and completes
    p = run(["crop", crop_src, "-o", out, "--json"])
    assert p.returncode == 0, p.stderr
    s = json.loads(p.stdout)
    assert (s["processed"], s["skipped"], s["failed"]) == (1, 3, 0)
    assert_same_store(out, want)
    assert facekit.verify(out)["ok"]


def test_failure_that_cannot_be_recorded_corrupts_nothing(crop_src, crop_clean, tmp_path):
    """With files limited to 4 KB even the failure records and the index cannot be written: every
    video still gets one clear line, nothing half-written is left, no crash; resume completes."""
    want, _ = crop_clean
    out = tmp_path / "f.h5"
    p = run(["crop", crop_src, "-o", out], preexec_fn=limited(4096))
    assert_clean_failure_output(p)
    errors = [ln for ln in p.stderr.splitlines() if ln.startswith(f"facekit: {crop_src}/")]
    assert len(errors) == 4
    assert all("File too large (errno 27) (and the failure could not be recorded: File too large" in ln
               for ln in errors), errors
    assert any("the index could not be rebuilt" in ln for ln in p.stderr.splitlines())
    assert leftovers(out) == [] and not out.exists()
    assert [n for n in os.listdir(store.shards_dir(out)) if n.endswith(".h5")] == []
    p = run(["crop", crop_src, "-o", out])
    assert p.returncode == 0, p.stderr
    assert_same_store(out, want)
    assert facekit.verify(out)["ok"]


def _mount(*args) -> bool:
    if os.geteuid() != 0 or not shutil.which("mount"):
        return False
    return subprocess.run(["mount", *map(str, args)], capture_output=True).returncode == 0


def _umount(path) -> None:
    if subprocess.run(["umount", str(path)], capture_output=True).returncode != 0:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


@pytest.fixture(scope="module")
def equal_src(tmp_path_factory):
    d = tmp_path_factory.mktemp("esrc")
    for i in range(5):
        mediagen.face_video(d / f"v{i}.mp4", n_frames=8, size=SMALL, audio=None)
    out = tmp_path_factory.mktemp("eclean") / "clean.h5"
    assert facekit.extract([str(d)], out, stages=CROP, progress=False).ok
    size = max(p.stat().st_size for p in store.shards_dir(out).glob("*.h5"))
    return d, contents(out), size


def test_disk_full_on_a_small_tmpfs(equal_src, tmp_path):
    """A real ENOSPC: room for three shards and a half. The fourth fails with one line, the run stops
    (no point decoding videos it cannot store) saying how many were not started; what is there
    verifies; after the disk grows, the same command completes the store."""
    src, want, shard_size = equal_src
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    kib = int(3.5 * shard_size) // 1024
    if not _mount("-t", "tmpfs", "-o", f"size={kib}k", "tmpfs", mnt):
        pytest.skip("cannot mount a tmpfs here (needs root with CAP_SYS_ADMIN)")
    try:
        out = mnt / "f.h5"
        p = run(["crop", src, "-o", out])
        assert_clean_failure_output(p)
        errors = [ln for ln in p.stderr.splitlines() if ln.startswith(f"facekit: {src}/")]
        assert len(errors) == 1 and errors[0].endswith("cannot write the store: No space left on device (errno 28)")
        (stop,) = [ln for ln in p.stderr.splitlines() if ln.startswith("facekit: error:")]
        assert "stopped with 1 video not started" in stop and "re-run the same command" in stop
        rep = facekit.verify(out)
        assert rep["ok"], rep["problems"]
        assert (rep["done"], rep["failed"]) == (3, 1) and leftovers(out) == []
        got = contents(out)
        for k, v in got.items():
            if v["status"] == "done":
                for name, a in want[k].items():
                    if isinstance(a, np.ndarray):
                        np.testing.assert_array_equal(v[name], a)
        assert subprocess.run(["mount", "-o", f"remount,size={8 * kib}k", str(mnt)]).returncode == 0
        p = run(["crop", src, "-o", out, "--json"])
        assert p.returncode == 0, p.stderr
        assert json.loads(p.stdout)["processed"] == 2, p.stdout
        assert_same_store(out, want)
        assert facekit.verify(out)["ok"]
    finally:
        _umount(mnt)


# ----------------------------------------------------------------------------- read-only

def test_read_only_output_directory_fails_before_any_work(clips, tmp_path, monkeypatch):
    """A real read-only bind mount when possible; the refusal happens before models load or any
    video is touched, with one clear line and exit code 2."""
    ro = tmp_path / "ro"
    ro.mkdir()
    # an existing, finished store: a re-run must also refuse before any work
    assert facekit.extract([str(clips["silent"])], ro / "old.h5", stages="detect", progress=False).ok
    if not _mount("--bind", "-o", "ro", ro, ro):
        pytest.skip("cannot make a read-only bind mount here (needs root with CAP_SYS_ADMIN)")
    try:
        assert not os.access(ro, os.W_OK) or _is_ro(ro)
        _forbid_work(monkeypatch)
        for name in ("new.h5", "old.h5"):
            r = CliRunner().invoke(main, ["detect", str(clips["face"]), "-o", str(ro / name)])
            assert r.exit_code == 2, r.output
            (line,) = r.output.strip().splitlines()
            assert line.startswith("facekit: error:") and "cannot write the store" in line
            assert "Read-only file system" in line
    finally:
        _umount(ro)


def _is_ro(path) -> bool:
    return bool(os.statvfs(path).f_flag & os.ST_RDONLY)


def _forbid_work(monkeypatch):
    def no(*a, **k):
        raise AssertionError("work started although the store cannot be written")

    monkeypatch.setattr(engine, "process_unit", no)
    monkeypatch.setattr(engine, "build_pipeline", no)


@pytest.mark.parametrize("how", ["under a file", "EROFS", "EACCES"])
def test_unwritable_store_is_refused_before_any_work(clips, tmp_path, monkeypatch, how):
    """The same refusal without root: a store below a regular file, and writes that fail as on a
    read-only file system or a directory without write permission (simulated)."""
    out = tmp_path / "s.h5"
    if how == "under a file":
        (tmp_path / "file").write_text("x")
        out = tmp_path / "file" / "s.h5"
        want = "Not a directory"
    else:
        code = getattr(errno, how)

        def refuse(self, *a, **k):
            raise OSError(code, os.strerror(code), str(self))

        monkeypatch.setattr(Path, "mkdir", refuse)
        monkeypatch.setattr(Path, "write_bytes", refuse)
        want = os.strerror(code)
    _forbid_work(monkeypatch)
    with pytest.raises(store.StoreError, match=want):
        facekit.extract([str(clips["face"])], out, stages="detect", progress=False)
    r = CliRunner().invoke(main, ["detect", str(clips["face"]), "-o", str(out)])
    assert r.exit_code == 2 and "cannot write the store" in r.output and want in r.output


# ----------------------------------------------------------------------------- SIGKILL

KILL_STAGES = "detect,track"  # the models that load fastest: more kill points per second
N_VIDEOS = 5
MIN_KILLS = 20


@pytest.fixture(scope="module")
def kill_src(tmp_path_factory):
    d = tmp_path_factory.mktemp("ksrc")
    for i in range(N_VIDEOS):
        mediagen.face_video(d / f"v{i}.mp4", n_frames=24 + 8 * i, size=SMALL, audio=None)
    return d


def _shards(d: Path) -> int:
    try:
        return sum(1 for n in os.listdir(d) if n.endswith(store.SHARD_SUFFIX) and not n.startswith("."))
    except FileNotFoundError:
        return 0


def _kill_once(cmd, out: Path, mode: str, rng: random.Random, run_sec: float) -> str | None:
    """Start ``cmd``, SIGKILL it at a point chosen by ``mode``; the phase it was killed in, or None
    when it finished first.

    random: any time during the run (startup and model loading included);
    work:   while a video is in flight (a temporary shard exists), after a random delay;
    commit: just after a shard was renamed into place;
    index:  while the index is being rebuilt (its temporary file exists).
    """
    d = store.shards_dir(out)
    before = _shards(d)
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t0 = time.monotonic()
    target = t0 + rng.uniform(0.3, run_sec)
    index_prefix = f".{out.name}."
    fire = None
    while p.poll() is None:
        now = time.monotonic()
        if fire is not None:
            if now >= fire:
                break
        elif mode == "random":
            fire = target
        elif mode == "work":
            try:
                if any(n.endswith(store.TMP_SUFFIX) for n in os.listdir(d)):
                    fire = now + rng.uniform(0.0, 0.25)
            except FileNotFoundError:
                pass
        elif mode == "commit":
            if _shards(d) > before:
                fire = now + rng.uniform(0.0, 0.01)
        elif mode == "index":
            if any(n.startswith(index_prefix) and n.endswith(store.TMP_SUFFIX) for n in os.listdir(out.parent)):
                fire = now
        if now - t0 > 120:
            p.kill()
            p.wait()
            raise AssertionError("run did not finish in 120 s")
        time.sleep(0.0005)
    if p.poll() is not None:
        return None
    p.send_signal(signal.SIGKILL)
    p.wait()
    left = leftovers(out)
    if any(n.startswith(index_prefix) for n in left):
        return "index"
    if left:
        return "video"
    return "between"


@pytest.mark.slow
def test_sigkill_at_random_points_then_rerun_equals_clean_run(kill_src, tmp_path):
    base = ["extract", str(kill_src), "--stages", KILL_STAGES, "-q"]
    clean = tmp_path / "clean.h5"
    t = time.monotonic()
    subprocess.run(facekit_exe() + base + ["-o", str(clean)], check=True, timeout=300)
    run_sec = time.monotonic() - t
    want = contents(clean)
    assert len(want) == N_VIDEOS
    rng = random.Random(1234)
    modes = ["work", "commit", "random", "index", "work"]
    phases: list[str] = []
    chain, attempts = 0, 0
    while len(phases) < MIN_KILLS and attempts < 2 * MIN_KILLS + 10:
        out = tmp_path / f"k{chain}.h5"
        for j in range(len(modes)):  # a chain: kill, kill again (the re-run resumes), ...
            phase = _kill_once(facekit_exe() + base + ["-o", str(out)], out, modes[(chain + j) % len(modes)],
                               rng, run_sec)
            attempts += 1
            if phase:
                phases.append(phase)
        # ... then the same command without a kill: the store equals the clean run's
        r = subprocess.run(facekit_exe() + base + ["-o", str(out), "--json"], capture_output=True, text=True,
                           timeout=300)
        assert r.returncode == 0, r.stderr
        s = json.loads(r.stdout)
        assert s["processed"] + s["skipped"] == N_VIDEOS and s["failed"] == 0
        assert_same_store(out, want)
        rep = facekit.verify(out)
        assert rep["ok"], rep["problems"]
        assert rep["videos"] == N_VIDEOS and rep["warnings"] == []  # nothing duplicated, nothing left over
        assert leftovers(out) == []
        chain += 1
    assert len(phases) >= MIN_KILLS, (phases, attempts)
    assert phases.count("video") >= 5, phases  # many kills with a video in flight
    assert len(set(phases)) >= 2, phases  # and elsewhere: startup, between videos, index rebuild
    print(f"\n{len(phases)} kills in {attempts} runs: "
          + ", ".join(f"{k} {phases.count(k)}" for k in ("video", "between", "index")))
