"""--device parsing, worker planning and the loud failures of the GPU backends (CPU-only checks;
the GPU itself is exercised by tests/test_gpu.py where one is present)."""

from __future__ import annotations

import queue

import numpy as np
import pytest
from click.testing import CliRunner

from facekit import device, engine, zoo
from facekit.cli import main
from facekit.config import Config

try:
    import cupy as _cupy  # noqa: F401
    _CUDA = bool(_cupy.cuda.is_available())
except Exception:  # noqa: BLE001
    _CUDA = False
try:
    import torch as _torch
    _CUDA = _CUDA or bool(_torch.cuda.is_available())
except Exception:  # noqa: BLE001
    pass
no_gpu = pytest.mark.skipif(_CUDA, reason="checks the failure on a machine without a GPU")


@pytest.mark.parametrize("spec,want", [
    ("cpu", device.DeviceSpec("cpu")), (None, device.DeviceSpec("cpu")), (" CPU ", device.DeviceSpec("cpu")),
    ("cuda", device.DeviceSpec("cuda", None)), ("cuda:1", device.DeviceSpec("cuda", (1,))),
    ("cuda:0,1", device.DeviceSpec("cuda", (0, 1))), ("cuda:2, 0", device.DeviceSpec("cuda", (2, 0)))])
def test_parse(spec, want):
    assert device.parse(spec) == want
    assert device.parse(device.format_spec(want)) == want


@pytest.mark.parametrize("spec", ["gpu", "cuda:", "cuda:a", "cuda:-1", "cuda:0,0", "cuda0", "mps", "cuda:0,"])
def test_parse_rejects(spec):
    with pytest.raises(device.DeviceError) as e:
        device.parse(spec)
    assert "\n" not in str(e.value) and "--device" in str(e.value)


def test_plan_cpu():
    assert device.plan(Config(workers=3)) == (3, [None, None, None])
    assert device.plan(Config()) == (1, [None])


def test_plan_gpus(monkeypatch):
    monkeypatch.setattr(device, "visible_gpus", lambda: (2, ""))
    assert device.plan(Config(device="cuda")) == (2, [0, 1])
    assert device.plan(Config(device="cuda", workers_per_device=2)) == (4, [0, 1, 0, 1])
    assert device.plan(Config(device="cuda:1")) == (1, [1])
    assert device.plan(Config(device="cuda:1,0", workers_per_device=3)) == (6, [1, 0, 1, 0, 1, 0])
    with pytest.raises(device.DeviceError, match="GPU 2 does not exist"):
        device.plan(Config(device="cuda:0,2"))
    with pytest.raises(device.DeviceError, match="--workers-per-device 4"):
        device.plan(Config(device="cuda", workers=4))


@no_gpu
def test_cuda_without_gpu_fails_loudly(monkeypatch):
    with pytest.raises(device.DeviceError, match="no usable CUDA GPU") as e:
        device.plan(Config(device="cuda"))
    assert "\n" not in str(e.value) and "--device cpu" in str(e.value)
    cfg = Config(device="cuda:0")
    with pytest.raises(device.DeviceError, match="PyTorch cannot use CUDA"):
        device.torch_device(cfg)
    with pytest.raises(device.DeviceError, match="CuPy"):
        device.cupy_module(cfg)


def test_cpu_backends():
    cfg = Config()
    assert device.torch_device(cfg) == "cpu"
    assert device.cupy_module(cfg) is None
    assert device.gpu_index(cfg) is None
    assert device.ort_providers("cpu") == ["CPUExecutionProvider"]


def test_pinned_gpu_is_used(monkeypatch):
    try:
        device.pin(1)
        assert device.gpu_index(Config(device="cuda:0,1")) == 1
    finally:
        device.pin(None)
    assert device.gpu_index(Config(device="cuda:1,0")) == 1
    assert device.gpu_index(Config(device="cuda")) == 0


def test_worker_takes_its_gpu_slot():
    q = queue.Queue()
    q.put(1)
    try:
        engine._init_worker(q)
        assert device._PINNED == 1
        engine._init_worker(None)  # CPU workers are not pinned
        assert device._PINNED == 1
    finally:
        device.pin(None)


def _yunet():
    return str(zoo.resolve("yunet").path)


def test_ort_session_cpu_runs():
    ort = pytest.importorskip("onnxruntime")
    sess = device.ort_session(_yunet(), "cpu")
    assert sess.get_providers() == ["CPUExecutionProvider"]
    assert isinstance(sess, ort.InferenceSession)


def test_ort_session_refuses_missing_cuda_provider(monkeypatch):
    ort = pytest.importorskip("onnxruntime")
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    with pytest.raises(device.DeviceError, match="has no CUDA provider") as e:
        device.ort_session(_yunet(), "cuda:0")
    assert "onnxruntime-gpu" in str(e.value) and "\n" not in str(e.value)


def test_ort_session_refuses_silent_cpu_fallback(monkeypatch):
    """onnxruntime only warns when the CUDA provider cannot be used and builds the session on the
    CPU: here the CPU-only package is told it has CUDA, so the session really falls back."""
    ort = pytest.importorskip("onnxruntime")
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has a CUDA provider")
    real = ort.get_available_providers()
    monkeypatch.setattr(ort, "get_available_providers", lambda: real + ["CUDAExecutionProvider"])
    assert device.ort_providers("cuda:1")[0] == ("CUDAExecutionProvider", {"device_id": 1})
    with pytest.raises(device.DeviceError, match="on the CPU"):
        device.ort_session(_yunet(), "cuda:1")


@no_gpu
@pytest.mark.parametrize("spec,msg", [("cuda", "no usable CUDA GPU"), ("cuda:0,1", "no usable CUDA GPU"),
                                      ("tpu", "expected cpu, cuda")])
def test_cli_device_errors_exit_2(clips, tmp_path, spec, msg):
    r = CliRunner().invoke(main, ["extract", str(clips["face"]), "-o", str(tmp_path / "x.h5"), "--device", spec])
    assert r.exit_code == 2, r.output
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and msg in lines[0] and lines[0].startswith("facekit: error: --device")
    assert not (tmp_path / "x.h5").exists()


def test_cli_workers_with_cuda_is_an_error(clips, tmp_path, monkeypatch):
    monkeypatch.setattr(device, "visible_gpus", lambda: (1, ""))
    r = CliRunner().invoke(main, ["detect", str(clips["face"]), "-o", str(tmp_path / "x.h5"), "--device", "cuda",
                                  "--workers", "2"])
    assert r.exit_code == 2 and "--workers-per-device 2" in r.output


def test_cpu_results_unchanged_by_device_option(clips, tmp_path):
    """--device cpu keeps the stage params of earlier versions (no 'device' key), so old stores resume."""
    import facekit

    s = facekit.extract([clips["face"]], tmp_path / "a.h5", stages="detect,track,landmarks,align,crop",
                        device="cpu", progress=False)
    assert s.ok
    with facekit.open(tmp_path / "a.h5") as st:
        v = st[s.results[0].key]
        params = v.attrs["stage_params"]
        assert all("device" not in p for p in params.values())
        assert v.faces["crop"].shape[1:] == (112, 112, 3)


@no_gpu
def test_detect_on_cuda_needs_cuda_torch(clips, tmp_path, monkeypatch):
    """--device cuda runs the detector in PyTorch on the GPU: with a GPU visible but a PyTorch that
    cannot use it, the run stops before any work with one line (no silent onnxruntime-on-CPU)."""
    monkeypatch.setattr(device, "visible_gpus", lambda: (1, ""))
    r = CliRunner().invoke(main, ["detect", str(clips["face"]), "-o", str(tmp_path / "x.h5"), "--device", "cuda"])
    assert r.exit_code == 2, r.output
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and "PyTorch cannot use CUDA" in lines[0]
    assert not (tmp_path / "x.h5").exists()


def test_detect_runtime_in_params(clips, tmp_path):
    import facekit

    s = facekit.extract([clips["face"]], tmp_path / "a.h5", stages="detect", progress=False)
    with facekit.open(tmp_path / "a.h5") as st:
        assert st[s.results[0].key].attrs["stage_params"]["detect"]["runtime"] == "onnxruntime"


def test_facekit_threads(monkeypatch, clips, tmp_path):
    monkeypatch.setenv("FACEKIT_THREADS", "3")
    assert device.cpu_threads() == 3
    monkeypatch.setenv("FACEKIT_THREADS", "two")
    with pytest.raises(device.DeviceError, match="FACEKIT_THREADS='two'"):
        device.cpu_threads()
    r = CliRunner().invoke(main, ["detect", str(clips["face"]), "-o", str(tmp_path / "x.h5")])
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert r.exit_code == 2 and len(lines) == 1 and "FACEKIT_THREADS" in lines[0], r.output
