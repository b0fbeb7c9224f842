"""Where the work runs: ``--device cpu|cuda|cuda:N|cuda:N,M`` and the helpers the stages use.

* ``cpu`` (default): everything on the CPU.
* ``cuda``: every GPU this process can see (``CUDA_VISIBLE_DEVICES`` honoured); ``cuda:N`` GPU N
  only; ``cuda:0,1`` GPUs 0 and 1. With several GPUs the engine starts one worker process per GPU
  (``--workers-per-device K``: K per GPU), each pinned to its GPU with ``pin()``; a video is always
  processed whole by one worker, so the results do not depend on the number of workers.

A CUDA device that cannot be used is an error before any work (``DeviceError``, one line), never
a silent fall-back to the CPU: each backend is checked (``torch_device`` for PyTorch models,
``cupy_module`` for the CuPy crop kernel, ``ort_session`` for ONNX models, which also refuses a
session that onnxruntime quietly moved to the CPU).

Which stages use the GPU: ``detect`` (YuNet's graph in PyTorch, ``face.yunet_torch``; onnxruntime
on the CPU), ``landmarks`` with the FAN models (PyTorch), ``crop`` (CuPy kernel, bit-identical to
the CPU path), ``parse`` with FaRL, ``embed`` and the ``whisper``/``vggish`` audio stages. dlib68
landmarks, tracking, ``align``/``pose`` (a few flops per face) and log-Mel stay on the CPU.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from dataclasses import dataclass

from .stages import StageError

CPU = "cpu"
ORT_CUDA = "CUDAExecutionProvider"
ORT_CPU = "CPUExecutionProvider"

#: The GPU index this process is pinned to (set by ``pin``); None: the first of the config's GPUs.
_PINNED: int | None = None


class DeviceError(StageError):
    """The requested device is malformed or cannot be used (the run stops before any work)."""


@dataclass(frozen=True)
class DeviceSpec:
    """A parsed ``--device``: ``kind`` "cpu" or "cuda"; ``gpus``: the GPU indices (None = all visible)."""

    kind: str
    gpus: tuple[int, ...] | None = None

    @property
    def is_cuda(self) -> bool:
        return self.kind == "cuda"


def parse(spec: str | None) -> DeviceSpec:
    """``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"cuda:0,1"`` -> DeviceSpec. Raises DeviceError."""
    s = (spec or CPU).strip().lower()
    if s == CPU:
        return DeviceSpec(CPU)
    if s == "cuda":
        return DeviceSpec("cuda", None)
    if s.startswith("cuda:"):
        parts = [p.strip() for p in s[5:].split(",")]
        if parts and all(p.isdigit() for p in parts):
            gpus = tuple(int(p) for p in parts)
            if len(set(gpus)) != len(gpus):
                raise DeviceError(f"--device {spec}: a GPU is listed twice")
            return DeviceSpec("cuda", gpus)
    raise DeviceError(f"--device {spec!r}: expected cpu, cuda, cuda:N or cuda:N,M,... (e.g. cuda:0,1)")


def _torch_cuda() -> tuple[int, str]:
    """(number of GPUs PyTorch sees, why none when 0)."""
    try:
        import torch
    except ImportError:
        return 0, "PyTorch is not installed"
    try:
        if torch.cuda.is_available():
            return torch.cuda.device_count(), ""
    except Exception as e:  # noqa: BLE001 - broken driver etc.
        return 0, f"torch {torch.__version__}: {' '.join(str(e).split())[:120]}"
    build = "a CPU-only build" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}, no GPU found"
    return 0, f"torch {torch.__version__} is {build}"


def _cupy_cuda() -> tuple[int, str]:
    """(number of GPUs CuPy sees, why none when 0)."""
    try:
        import cupy
    except ImportError:
        return 0, "CuPy is not installed (pip install 'facekit[gpu]', or cupy-cudaXXx for your CUDA)"
    except Exception as e:  # noqa: BLE001 - CuPy raises on broken CUDA libraries at import
        return 0, f"CuPy cannot load: {' '.join(str(e).split())[:160]}"
    try:
        if cupy.cuda.is_available():
            return cupy.cuda.runtime.getDeviceCount(), ""
    except Exception as e:  # noqa: BLE001
        return 0, f"CuPy {cupy.__version__}: {' '.join(str(e).split())[:120]}"
    return 0, f"CuPy {cupy.__version__} finds no CUDA GPU (driver missing or CUDA_VISIBLE_DEVICES empty)"


def visible_gpus() -> tuple[int, str]:
    """(number of CUDA GPUs this process can use through PyTorch or CuPy, why none when 0)."""
    n_t, why_t = _torch_cuda()
    n_c, why_c = _cupy_cuda()
    n = max(n_t, n_c)
    return n, ("" if n else f"{why_t}; {why_c}")


def gpus_of(spec: DeviceSpec) -> tuple[int, ...]:
    """The GPU indices a CUDA spec names, checked against the visible GPUs. Raises DeviceError."""
    n, why = visible_gpus()
    if n == 0:
        raise DeviceError(f"--device {format_spec(spec)}: no usable CUDA GPU ({why}); use --device cpu")
    gpus = spec.gpus if spec.gpus is not None else tuple(range(n))
    missing = [g for g in gpus if g >= n]
    if missing:
        raise DeviceError(f"--device {format_spec(spec)}: GPU {missing[0]} does not exist "
                          f"({n} visible: {', '.join(map(str, range(n)))})")
    return gpus


def format_spec(spec: DeviceSpec) -> str:
    if not spec.is_cuda:
        return CPU
    return "cuda" if spec.gpus is None else "cuda:" + ",".join(map(str, spec.gpus))


def plan(config) -> tuple[int, list[int | None]]:
    """How a run is spread: (number of worker processes, the GPU of each worker slot).

    CPU: ``config.workers`` slots of None. CUDA: ``workers_per_device`` slots per GPU, in the
    order ``[g0, g1, ..., g0, g1, ...]``. Raises DeviceError (bad spec, no GPU, workers clash).
    """
    spec = parse(config.device)
    per = int(getattr(config, "workers_per_device", 1) or 1)
    if per < 1:
        raise DeviceError(f"--workers-per-device {per}: need at least 1")
    if not spec.is_cuda:
        return max(1, int(config.workers)), [None] * max(1, int(config.workers))
    if int(config.workers) > 1:
        raise DeviceError(f"--workers {config.workers} with --device {config.device}: on GPUs the workers are "
                          f"set per GPU, use --workers-per-device {config.workers}")
    gpus = gpus_of(spec)
    slots = [g for _ in range(per) for g in gpus]
    return len(slots), slots


def pin(gpu: int | None) -> None:
    """Pin this process to GPU ``gpu`` (None: unpin): CuPy's and PyTorch's current device."""
    global _PINNED
    _PINNED = gpu
    if gpu is None:
        return
    try:
        import cupy

        if cupy.cuda.is_available():
            cupy.cuda.Device(gpu).use()
    except Exception:  # noqa: BLE001 - CuPy absent: the stages that need it say so
        pass
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.set_device(gpu)
    except Exception:  # noqa: BLE001 - PyTorch absent: the stages that need it say so
        pass


def gpu_index(config) -> int | None:
    """The GPU this process works on for ``config`` (None on CPU): the pinned one, else the first."""
    spec = parse(config.device)
    if not spec.is_cuda:
        return None
    if _PINNED is not None:
        return _PINNED
    return spec.gpus[0] if spec.gpus else 0


def torch_device(config) -> str:
    """``"cpu"`` or ``"cuda:N"`` for PyTorch models of this process. Raises DeviceError when CUDA
    is asked for and PyTorch cannot use it (never falls back to the CPU)."""
    g = gpu_index(config)
    if g is None:
        return CPU
    n, why = _torch_cuda()
    if n == 0:
        raise DeviceError(f"--device {config.device}: PyTorch cannot use CUDA ({why}); install a CUDA build "
                          f"of PyTorch (https://pytorch.org/get-started/locally/) or use --device cpu")
    if g >= n:
        raise DeviceError(f"--device {config.device}: PyTorch sees {n} GPU(s), no GPU {g}")
    return f"cuda:{g}"


def torch_device_of(device: str) -> str:
    """``"cpu"`` or ``"cuda:N"`` for a device string naming at most one GPU (``"cuda"``: this
    process's pinned GPU, else GPU 0), for a model given a device directly rather than a Config
    (e.g. ``YuNetTorch(device=torch_device(config))``). Raises DeviceError as ``torch_device``."""
    spec = parse(device)
    if not spec.is_cuda:
        return CPU
    if spec.gpus is not None and len(spec.gpus) > 1:
        raise DeviceError(f"--device {device}: one model runs on one GPU, name it (cuda:N)")
    g = spec.gpus[0] if spec.gpus else (_PINNED if _PINNED is not None else 0)
    n, why = _torch_cuda()
    if n == 0:
        raise DeviceError(f"--device {device}: PyTorch cannot use CUDA ({why}); install a CUDA build "
                          f"of PyTorch (https://pytorch.org/get-started/locally/) or use --device cpu")
    if g >= n:
        raise DeviceError(f"--device {device}: PyTorch sees {n} GPU(s), no GPU {g}")
    return f"cuda:{g}"


def cupy_module(config):
    """The ``cupy`` module (current device = this process's GPU) when the config asks for CUDA,
    None on CPU. Raises DeviceError when CUDA is asked for and CuPy cannot use it."""
    g = gpu_index(config)
    if g is None:
        return None
    n, why = _cupy_cuda()
    if n == 0:
        raise DeviceError(f"--device {config.device}: the GPU crop kernel needs CuPy with CUDA ({why}); "
                          f"or use --device cpu")
    if g >= n:
        raise DeviceError(f"--device {config.device}: CuPy sees {n} GPU(s), no GPU {g}")
    import cupy

    cupy.cuda.Device(g).use()
    return cupy


def ort_providers(config_or_device, gpu: int | None = None) -> list:
    """onnxruntime providers for a device: CPU only, or CUDA (``device_id``) then CPU for the few
    operators CUDA lacks. Raises DeviceError when CUDA is asked for and this onnxruntime has no
    CUDA provider (the CPU-only ``onnxruntime`` package; ``onnxruntime-gpu`` has it)."""
    import onnxruntime as ort

    device = config_or_device if isinstance(config_or_device, str) else config_or_device.device
    spec = parse(device)
    if not spec.is_cuda:
        return [ORT_CPU]
    if gpu is None:
        gpu = gpu_index(config_or_device) if not isinstance(config_or_device, str) else \
            (_PINNED if _PINNED is not None else (spec.gpus[0] if spec.gpus else 0))
    avail = ort.get_available_providers()
    if ORT_CUDA not in avail:
        raise DeviceError(f"--device {device}: onnxruntime {ort.__version__} has no CUDA provider (available: "
                          f"{', '.join(avail)}); pip uninstall onnxruntime && pip install onnxruntime-gpu, "
                          f"or use --device cpu")
    return [(ORT_CUDA, {"device_id": int(gpu)}), ORT_CPU]


def ort_session(path, device="cpu", gpu: int | None = None, options=None):
    """An ``onnxruntime.InferenceSession`` of the model file ``path`` on ``device`` (a device
    string or a Config). On CUDA it raises DeviceError when the CUDA provider is missing or when
    onnxruntime created the session on the CPU anyway (it only warns when the CUDA/cuDNN
    libraries fail to load: the silent fall-back this refuses)."""
    import onnxruntime as ort

    providers = ort_providers(device, gpu)
    model = bytes(path) if isinstance(path, (bytes, bytearray)) else str(path)  # a file or a serialised model
    sess = ort.InferenceSession(model, sess_options=options, providers=providers)
    if providers[0] != ORT_CPU and ORT_CUDA not in sess.get_providers():
        dev = device if isinstance(device, str) else device.device
        what = "the model" if isinstance(path, (bytes, bytearray)) else path
        raise DeviceError(f"--device {dev}: onnxruntime created the session for {what} on the CPU "
                          f"(providers: {', '.join(sess.get_providers())}): the CUDA provider failed to load, "
                          f"check the CUDA and cuDNN libraries onnxruntime-gpu {ort.__version__} needs")
    return sess


#: held while a PyTorch model runs on a GPU with the cuDNN settings it needs (see ``cudnn_mode``)
_CUDNN_LOCK = threading.RLock()


@contextmanager
def cudnn_mode(torch_device, exact: bool):
    """Run a PyTorch model on ``torch_device`` with fixed cuDNN settings: ``exact`` = full float32
    convolutions (TF32 off: FAN, YuNet, Whisper's fp32 mode), else PyTorch's defaults (TF32 on).

    cuDNN's settings are process-wide, and the detector runs in a background thread beside the
    main thread's GPU stages: every GPU forward pass takes this lock, so no model ever sees another
    one's settings (the results would then depend on timing). A no-op on the CPU."""
    if not str(torch_device).startswith("cuda"):
        yield
        return
    import torch

    with _CUDNN_LOCK, torch.backends.cudnn.flags(enabled=True, benchmark=False, deterministic=False,
                                                 allow_tf32=not exact):
        yield


def cpu_threads() -> int:
    """The CPU threads this process's compute may use: ``FACEKIT_THREADS`` when set (workers of
    ``--workers N`` get their share of the CPUs this way), else the CPUs it may run on."""
    import os

    env = os.environ.get("FACEKIT_THREADS")
    if env:
        try:
            n = int(env)
        except ValueError:
            n = 0
        if n < 1:
            raise DeviceError(f"FACEKIT_THREADS={env!r}: expected a whole number of threads >= 1")
        return n
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def stages_on_gpu(pipe) -> list[str]:
    """Names of the stages of a built pipeline that run on the GPU (attribute ``on_gpu``)."""
    return [s.name for s in pipe if getattr(s, "on_gpu", False)]
