"""The Ray backend: a local Ray cluster started by the test, results equal to a local run."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import facekit

ray = pytest.importorskip("ray")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """`ray start --head` in its own temp dir: a real cluster the CLI connects to by address."""
    port = _free_port()
    tmp = tmp_path_factory.mktemp("ray")
    ray_bin = str(Path(sys.executable).with_name("ray"))
    # a loopback test cluster without Ray's token authentication, whatever ~/.ray/auth_token holds
    # (Ray >= 2.5x turns token auth on when that file exists; clients then need the same token)
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}
    r = subprocess.run([ray_bin, "start", "--head", f"--port={port}", "--num-cpus=2", "--num-gpus=0",
                        "--include-dashboard=false", f"--temp-dir={tmp}", "--disable-usage-stats"],
                       capture_output=True, text=True, env=env, timeout=180)
    if r.returncode != 0:
        pytest.skip(f"cannot start a local Ray cluster: {r.stderr[-300:]}")
    yield f"127.0.0.1:{port}", env
    subprocess.run([ray_bin, "stop", "--force"], capture_output=True, env=env, timeout=120)


def test_ray_backend_equals_a_local_run(cluster, clips, bad_files, tmp_path):
    cluster, env = cluster
    inputs = [str(clips["face"]), str(clips["silent"]), str(bad_files["text"])]
    local = tmp_path / "local.h5"
    facekit.extract(inputs, local, stages="detect,track,mel", progress=False)
    out = tmp_path / "ray.h5"
    r = subprocess.run([sys.executable, "-m", "facekit", "extract", *inputs, "-o", str(out), "--stages",
                        "detect,track,mel", "--backend", "ray", "--ray-address", cluster, "--workers", "2",
                        "--json"], capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 1, r.stderr  # the text file fails, as locally
    assert "text.mp4" in r.stderr and "Traceback" not in r.stderr
    with facekit.open(local) as a, facekit.open(out) as b:
        assert list(a) == list(b)
        for k in a:
            assert a[k].status == b[k].status
            if a[k].status == "done":
                assert b[k].attrs["cpu_threads"] == 1  # 2 actors share the 2-CPU node
                np.testing.assert_array_equal(a[k].faces.box, b[k].faces.box)
                np.testing.assert_array_equal(a[k].faces.track, b[k].faces.track)
                np.testing.assert_array_equal(a[k].audio["mel"].data, b[k].audio["mel"].data)
    assert facekit.verify(out)["ok"]
    # a re-run resumes (everything skipped) through the cluster too
    r2 = subprocess.run([sys.executable, "-m", "facekit", "extract", *inputs, "-o", str(out), "--stages",
                         "detect,track,mel", "--backend", "ray", "--ray-address", cluster, "--json", "-q"],
                        capture_output=True, text=True, timeout=600, env=env)
    assert r2.returncode == 1, r2.stderr  # the text file is retried and fails again
    summary = json.loads(r2.stdout)
    assert (summary["skipped"], summary["processed"], summary["failed"]) == (2, 0, 1), summary


def test_thread_shares_split_each_node_among_its_actors():
    from facekit.cluster import thread_shares

    nodes = [("a", 16), ("b", 8), ("a", 16), ("a", 16), ("c", 2), ("c", 2), ("c", 2)]
    assert thread_shares(nodes) == [5, 8, 5, 5, 1, 1, 1]
    assert thread_shares(nodes, "6") == [2, 6, 2, 2, 1, 1, 1]  # the driver's FACEKIT_THREADS caps each node


def test_unreachable_cluster_is_one_line(tmp_path, clips):
    r = subprocess.run([sys.executable, "-m", "facekit", "detect", str(clips["face"]), "-o", str(tmp_path / "x.h5"),
                        "--backend", "ray", "--ray-address", f"127.0.0.1:{_free_port()}"],
                       capture_output=True, text=True, timeout=300, env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"})
    assert r.returncode == 2, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("facekit: error:")]
    assert lines and "cannot connect to the Ray cluster" in lines[0]
