"""`facekit merge`: stores written separately joined into one; job arrays into one store need none."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

import facekit
from facekit.merge import MergeError, merge


def _run(*args):
    return subprocess.run([sys.executable, "-m", "facekit", *map(str, args)], capture_output=True, text=True)


@pytest.fixture(scope="module")
def parts(clips, bad_files, tmp_path_factory):
    d = tmp_path_factory.mktemp("merge")
    inputs = [str(clips["face"]), str(clips["face2"]), str(clips["silent"]), str(bad_files["text"])]
    whole = d / "whole.h5"
    facekit.extract(inputs, whole, stages="detect,mel", progress=False)
    for i in (1, 2):  # a job array whose jobs wrote to their own disks
        facekit.extract(inputs, d / f"job{i}" / "feats.h5" if (d / f"job{i}").mkdir() is None else None,
                        stages="detect,mel", shard=f"{i}/2", progress=False)
    return d, whole


def test_merged_job_stores_equal_one_run(parts):
    d, whole = parts
    out = d / "merged.h5"
    rep = merge([d / "job1" / "feats.h5", d / "job2" / "feats.h5"], out)
    assert rep.ok and rep.videos == 4 and len(rep.copied) == 4
    with facekit.open(out) as m, facekit.open(whole) as w:
        assert list(m) == list(w)
        for k in w:
            assert m[k].status == w[k].status
            if w[k].status == "done":
                np.testing.assert_array_equal(m[k].faces.box, w[k].faces.box)
                np.testing.assert_array_equal(m[k].audio["mel"].data, w[k].audio["mel"].data)
        assert json.loads(m.attrs["merged_from"]) if isinstance(m.attrs["merged_from"], str) else m.attrs["merged_from"]
    assert facekit.verify(out)["ok"]
    again = merge([d / "job1" / "feats.h5", d / "job2" / "feats.h5"], out)  # idempotent
    assert again.ok and not again.copied and len(again.kept) == 4


def test_results_replace_failures_and_conflicts_are_reported(parts, clips, tmp_path):
    d, whole = parts
    a, b = tmp_path / "a.h5", tmp_path / "b.h5"
    facekit.extract([str(clips["face"])], a, stages="detect", progress=False)
    facekit.extract([str(clips["face"])], b, stages="detect", det_threshold=0.9, progress=False)
    rep = merge([b], a)
    assert not rep.ok and len(rep.conflicts) == 1 and "face.mp4" in rep.conflicts[0]
    with facekit.open(a) as st:
        assert st["face.mp4"].attrs["stage_params"]["detect"]["det_threshold"] == 0.8  # kept
    rep = merge([b], a, overwrite=True)
    assert rep.ok and rep.replaced == ["face.mp4"]
    with facekit.open(a) as st:
        assert st["face.mp4"].attrs["stage_params"]["detect"]["det_threshold"] == 0.9


def test_merge_cli(parts, tmp_path):
    d, _ = parts
    r = _run("merge", d / "job1" / "feats.h5", "-o", tmp_path / "m.h5", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["videos"] >= 1 and "copied" in r.stderr
    r = _run("merge", "-o", tmp_path / "m.h5")  # index only
    assert r.returncode == 0 and "0 copied" in r.stderr
    r = _run("merge", tmp_path, "-o", tmp_path / "x.h5")
    assert r.returncode == 2 and r.stderr.startswith("facekit: error:") and "not a facekit store" in r.stderr
    with pytest.raises(MergeError, match="output store itself"):
        merge([tmp_path / "m.h5"], tmp_path / "m.h5")
