"""Shared fixtures: generated media (tests/mediagen.py) and the real data in ../shared/data."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, os.path.dirname(__file__))
import mediagen  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def _shared_data() -> Path | None:
    for cand in (os.environ.get("FACEKIT_TEST_DATA"), ROOT.parent / "shared" / "data"):
        if cand and Path(cand, "MANIFEST.tsv").is_file():
            return Path(cand)
    return None


@pytest.fixture(scope="session")
def shared_data() -> Path:
    d = _shared_data()
    if d is None:
        pytest.skip("real data not found (../shared/data or FACEKIT_TEST_DATA)")
    return d


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path_factory, monkeypatch):
    """Every test gets its own empty model cache and no downloads."""
    monkeypatch.setenv("FACEKIT_HOME", str(tmp_path_factory.mktemp("fkhome")))
    monkeypatch.setenv("FACEKIT_OFFLINE", "1")


@pytest.fixture(scope="session")
def clips(tmp_path_factory) -> dict[str, Path]:
    """A small set of generated clips, made once per session."""
    d = tmp_path_factory.mktemp("clips")
    (d / "sub").mkdir()
    return {
        "face": mediagen.face_video(d / "face.mp4", n_frames=20, fps=25, audio="speech"),
        "face2": mediagen.face_video(d / "sub" / "face2.mkv", n_frames=12, fps=10, audio="tone"),
        "silent": mediagen.silent_video(d / "silent.mp4", n_frames=10),
    }


@pytest.fixture(scope="session")
def bad_files(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("bad")
    return {
        "zero": mediagen.zero_byte(d / "zero.mp4"),
        "text": mediagen.text_as_mp4(d / "text.mp4"),
        "nomoov": mediagen.mp4_without_moov(d / "nomoov.mp4"),
    }
