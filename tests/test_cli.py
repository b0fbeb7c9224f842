"""The command line: click's runner for behaviour, a subprocess of the installed `facekit` for the
real thing (exit codes, stderr lines, stdin input, SIGKILL then resume)."""

from __future__ import annotations

import hashlib
import json
import os
import random
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
from facekit.cli import main

import mediagen


def run(*args, input=None):
    return CliRunner().invoke(main, [str(a) for a in args], input=input, catch_exceptions=False)


def facekit_exe() -> list[str]:
    exe = Path(sys.executable).parent / "facekit"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "facekit"]


def digest(out) -> dict[str, str]:
    """key -> hash of everything a trainer reads (status, frames, faces, audio)."""
    d = {}
    with facekit.open(out) as st:
        for k in st:
            v = st[k]
            h = hashlib.sha256(v.status.encode())
            h.update(v.frames.t.tobytes())
            for name in sorted(v.faces.keys()):
                h.update(v.faces[name].tobytes())
            for name, a in sorted(v.audio.items()):
                h.update(a.data.tobytes() + a.t.tobytes())
            d[k] = h.hexdigest()
    return d


def test_help_lists_commands_and_examples():
    r = run("--help")
    assert r.exit_code == 0
    for cmd in ("extract", "detect", "audio", "info", "models"):
        assert cmd in r.output
    r = run("extract", "--help")
    assert "Examples:" in r.output and "--fps" in r.output and "--weights" in r.output


def test_json_stdout_holds_only_the_summary(clips, tmp_path, monkeypatch):
    """Whatever prints to stdout during a run (Ray's messages about a lost worker, for one) goes to
    stderr with --json, so scripts can parse stdout."""
    from facekit import engine

    real = engine.extract

    def noisy(*a, **k):
        print("(raylet) A worker died or was killed while executing a task")
        return real(*a, **k)

    monkeypatch.setattr(engine, "extract", noisy)
    r = run("extract", clips["face"], "-o", tmp_path / "feats.h5", "--stages", "detect", "--json", "-q")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["processed"] == 1
    assert "(raylet)" in r.stderr


def test_extract_json_summary_and_info(clips, tmp_path):
    out = tmp_path / "feats.h5"
    r = run("extract", clips["face"], "-o", out, "--json", "-q")
    assert r.exit_code == 0, r.output
    s = json.loads(r.stdout)
    assert s["processed"] == 1 and s["failed"] == 0 and s["videos"][0]["n_faces"] == 20
    r = run("info", out)
    assert r.exit_code == 0 and "face.mp4" in r.output and "done" in r.output
    d = json.loads(run("info", out, "--json").output)
    assert d["videos"] == 1 and d["frames"] == 20 and d["faces"] == 20 and d["streams"]["audio/mel"] == 1


def test_detect_and_audio_are_stage_subsets(clips, tmp_path):
    r = run("detect", clips["face"], "-o", tmp_path / "d.h5", "-q")
    assert r.exit_code == 0
    r = run("audio", clips["face"], "-o", tmp_path / "a.h5", "-q")
    assert r.exit_code == 0
    with facekit.open(tmp_path / "d.h5") as d, facekit.open(tmp_path / "a.h5") as a:
        assert d["face.mp4"].attrs["stages"] == ["detect"] and not d["face.mp4"].audio
        assert a["face.mp4"].attrs["stages"] == ["mel"] and "faces" not in a["face.mp4"].group


def test_failures_exit_1_with_one_line_each(clips, bad_files, tmp_path):
    out = tmp_path / "feats.h5"
    p = subprocess.run(facekit_exe() + ["extract", str(clips["face"]), str(bad_files["text"]),
                                        str(bad_files["zero"]), "-o", str(out)],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 1
    lines = [ln for ln in p.stderr.splitlines() if ln.startswith("facekit: /") or "Traceback" in ln]
    assert "Traceback" not in p.stderr
    assert len(lines) == 2 and all(str(bad_files["text"].parent) in ln for ln in lines)
    assert "1 processed, 0 skipped, 2 failed" in p.stderr


def test_cannot_start_exits_2(clips, tmp_path):
    r = CliRunner().invoke(main, ["extract", str(clips["face"]), "-o", str(tmp_path / "x.h5"),
                                  "--stages", "nosuchstage"])
    assert r.exit_code == 2 and "unknown stage 'nosuchstage'" in r.output
    # a stage whose model must be downloaded, offline (the tests' FACEKIT_OFFLINE=1)
    r = CliRunner().invoke(main, ["extract", str(clips["face"]), "-o", str(tmp_path / "x.h5"),
                                  "--stages", "whisper"])
    assert r.exit_code == 2 and "model whisper-base: weight file base.pt not found" in r.output
    r = CliRunner().invoke(main, ["extract", str(clips["face"]), "-o", str(tmp_path / "x.h5"),
                                  "--weights", "yunet=/nonexistent.onnx"])
    assert r.exit_code == 2 and "does not exist" in r.output
    r = CliRunner().invoke(main, ["extract", str(clips["face"]), "-o", str(tmp_path / "nodir" / "x.h5")])
    assert r.exit_code == 2 and "does not exist" in r.output
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    if os.access(ro, os.W_OK):
        pytest.skip("running as root: read-only directories are writable")
    r = CliRunner().invoke(main, ["extract", str(clips["face"]), "-o", str(ro / "x.h5")])
    assert r.exit_code == 2 and "cannot write" in r.output


def test_inputs_from_stdin_and_list_file(clips, tmp_path):
    lst = tmp_path / "list.txt"
    lst.write_text(f"# my clips\n{clips['face']}\n\n{clips['face2']}\n")
    r = run("audio", f"@{lst}", "-o", tmp_path / "a.h5", "-q", "--json")
    assert json.loads(r.stdout)["processed"] == 2
    r = run("audio", "-", "-o", tmp_path / "b.h5", "-q", "--json", input=f"{clips['face']}\n")
    assert json.loads(r.stdout)["processed"] == 1


def test_directory_input_and_frames_folder(tmp_path):
    root = tmp_path / "data"
    (root / "a").mkdir(parents=True)
    mediagen.face_video(root / "a" / "v.mp4", n_frames=6, audio=None)
    mediagen.frames_folder(root / "seq", n=5)
    (root / "b").mkdir()
    mediagen.still_image(root / "b" / "img.jpg")
    (root / "notes.txt").write_text("not media")
    r = run("detect", root, "-o", tmp_path / "f.h5", "-q", "--json", "--frame-rate", "10")
    s = json.loads(r.stdout)
    assert s["failed"] == 0, s
    with facekit.open(tmp_path / "f.h5") as st:
        assert sorted(st) == ["a/v.mp4", "b/img.jpg", "seq"]
        seq = st["seq"]
        assert len(seq.frames) == 5 and np.allclose(np.diff(seq.frames.t), 0.1)
        assert len(st["b/img.jpg"].frames) == 1
        assert (st["seq"].faces.per_frame_counts() == 1).all()


def test_subprocess_python_m_and_version():
    p = subprocess.run([sys.executable, "-m", "facekit", "--version"], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and facekit.__version__ in p.stdout


def test_refuses_to_overwrite_a_foreign_file_or_an_input(clips, tmp_path):
    import h5py

    mine = tmp_path / "mine.h5"
    with h5py.File(mine, "w") as f:
        f["precious"] = np.arange(3)
    r = CliRunner().invoke(main, ["detect", str(clips["face"]), "-o", str(mine)])
    assert r.exit_code == 2 and "not a facekit store" in r.output
    with h5py.File(mine, "r") as f:
        assert "precious" in f
    import shutil

    v = tmp_path / "v.mp4"
    shutil.copy(clips["face"], v)
    r = CliRunner().invoke(main, ["detect", str(v), "-o", str(v)])
    assert r.exit_code == 2
    r = CliRunner().invoke(main, ["detect", str(tmp_path / "empty_dir_that_exists"), "-o", str(tmp_path / "x.h5")])
    assert r.exit_code != 0
    (tmp_path / "nothing").mkdir()
    r = CliRunner().invoke(main, ["detect", str(tmp_path / "nothing"), "-o", str(tmp_path / "x.h5")])
    assert r.exit_code == 2 and "no media files" in r.output


def test_audio_command_takes_audio_files_from_folders(tmp_path):
    d = tmp_path / "speech"
    d.mkdir()
    mediagen.audio_only(d / "a.wav", duration=0.5)
    mediagen.audio_only(d / "b.m4a", duration=0.5)
    r = run("audio", d, "-o", tmp_path / "a.h5", "-q", "--json")
    s = json.loads(r.stdout)
    assert r.exit_code == 0 and s["processed"] == 2
    with facekit.open(tmp_path / "a.h5") as st:
        assert sorted(st) == ["a.wav", "b.m4a"] and st["a.wav"].audio["mel"].data.shape[0] == 51


def test_options_without_effect_are_named(clips, tmp_path):
    r = subprocess.run([sys.executable, "-m", "facekit", "detect", str(clips["face"]), "-o", str(tmp_path / "d.h5"),
                        "--mel-hop", "320", "--parser", "farl-lapa", "--det-threshold", "0.7"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    warned = [ln for ln in r.stderr.splitlines() if "has no effect" in ln]
    assert len(warned) == 2 and "--mel-hop" in warned[0] + warned[1] and "--parser" in warned[0] + warned[1]
    assert all(ln.startswith("facekit: warning: ") for ln in warned)  # --det-threshold is used: no warning
