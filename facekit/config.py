"""The resolved configuration of a run: every option of ``facekit extract`` in one dataclass.

The CLI builds a ``Config`` from its flags and the Python API takes the same fields as keyword
arguments (``facekit.extract(inputs, out, stages="detect,mel", fps=5)``). It is stored as JSON in
the store (root attribute ``config``) so every output says how it was made.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

from .media import DEFAULT_BATCH_SIZE, DEFAULT_FRAME_RATE

#: Stages each command runs by default (DESIGN.md), before filtering to what is available.
DEFAULT_STAGES = {
    "extract": ["detect", "track", "landmarks", "align", "pose", "mel"],
    "detect": ["detect"],
    "align": ["detect", "track", "landmarks", "align"],
    "crop": ["detect", "track", "landmarks", "align", "crop"],
    "parse": ["detect", "track", "landmarks", "align", "parse"],
    "embed": ["detect", "track", "landmarks", "align", "embed"],
    "audio": ["mel"],
}


@dataclass
class Config:
    stages: list[str] | None = None  # None: the default of `facekit extract` (DEFAULT_STAGES)
    # frames
    fps: float | None = None  # sample frames at this rate (by timestamp); None = every frame
    max_side: int | None = None  # downscale decoded frames so max(H, W) <= this
    batch_size: int = DEFAULT_BATCH_SIZE  # frames per batch
    frame_rate: float = DEFAULT_FRAME_RATE  # frames/s of folders of image frames
    frame_folders: str = "auto"  # folders of images: "auto" (numbered names), "yes" or "no"
    # detection
    detector: str = "yunet"
    det_threshold: float = 0.8  # minimum detection score
    det_nms: float = 0.3  # IoU above which overlapping detections are suppressed
    det_size: int = 1920  # frames with a longer side are downscaled to it for the detector; 0 = never
    detect_every: int = 1  # run the detector every N frames (and on cuts/lost faces); follow faces in between
    # tracking and face selection
    track_max_gap: float = 1.0  # seconds a track survives without a detection
    max_faces: int | None = None  # keep the faces of the K best tracks (PRIMARY_RULE score)
    primary: bool = False  # keep only the primary (main) face
    per_shot: bool = False  # apply --max-faces/--primary within each shot
    # landmarks
    landmarker: str = "dlib68"
    smooth: bool = False  # One-Euro smoothing of landmarks along each track (adds the track stage)
    smooth_min_cutoff: float = 1.0  # Hz
    smooth_beta: float = 0.05  # s/pixel
    # alignment and crops
    align_template: str = "arcface"  # "arcface" (5 key points) or "ffhq" (68 landmarks)
    crop_size: int | None = None  # pixels; default 112 for arcface, 256 for ffhq
    crop_margin: float = 0.0  # extra field of view, fraction of the crop side on each side
    crops_in_store: bool = True  # write faces/crop into the store
    images: str | None = None  # also write crops as image files below this directory
    image_format: str = "jpg"  # "jpg" or "png"
    write_images: bool = True  # with `images`: one image file per crop
    track_videos: bool = False  # with `images`: one mp4 of crops per track
    # face parsing
    parser: str = "landmarks68"  # "landmarks68" (embedded), "farl-lapa", "farl-celebm" (download)
    masks: bool = False  # with `images`: also write each face's mask as a palette PNG (adds crop, parse)
    # embeddings (stage embed) and identity re-joining of tracks
    embed: str = "sface"  # comma-separated backbones (facekit.face.embed.BACKBONES)
    embed_dtype: str = "float32"  # "float32" or "float16" for faces/embed/*
    embed_pool: str = "none"  # "none" or "track": also tracks/embed/<model> (mean per track)
    embed_batch: int = 32  # crops per model call
    track_rejoin: float | None = None  # merge tracks whose mean sface embeddings have cosine > this
    # log-Mel
    mel_n_mels: int = 80
    mel_n_fft: int = 400  # samples (25 ms at 16 kHz)
    mel_hop: int = 160  # samples (10 ms at 16 kHz)
    mel_window: str = "hann"
    mel_fmin: float = 0.0  # Hz
    mel_fmax: float = 8000.0  # Hz
    mel_log_floor: float = 1e-10  # power floor before 10*log10 (dB)
    mel_deltas: int = 0  # append deltas (1) or deltas and delta-deltas (2) to each mel row
    mel_delta_window: int = 2  # frames each side of the delta regression (HTK/Kaldi default)
    # VGGish
    vggish_hop: float = 0.96  # seconds between examples (a multiple of 0.01; 0.96 = the reference)
    vggish_pad: bool = False  # zero-pad the tail so the last example reaches the last sample
    vggish_postprocess: bool = False  # PCA + 8-bit quantisation (values 0..255 as float32)
    vggish_batch_size: int = 32  # examples per forward pass
    # Whisper encoder features (stage whisper)
    whisper_model: str = "whisper-base"  # registry name (whisper-tiny.en ... whisper-large-v3-turbo) or alias
    whisper_layer: str = "last"  # hidden state: last, an index (0 = conv stem, k = block k, -1 = last) or a comma list (mean)
    whisper_batch_size: int = 4  # 30 s windows per encoder call
    whisper_fp32: bool = False  # on CUDA compute in float32 instead of openai-whisper's float16
    # models and run control
    weights: dict = field(default_factory=dict)  # model name -> local file
    device: str = "cpu"  # "cpu", "cuda" (every visible GPU), "cuda:N" or "cuda:N,M,..." (facekit.device)
    workers: int = 1  # CPU worker processes
    workers_per_device: int = 1  # with --device cuda: worker processes per GPU
    shard: str | None = None  # "I/N": process the I-th of N slices of the sorted inputs (1-based)
    backend: str = "local"  # "local" (processes on this machine) or "ray" (actors on a Ray cluster)
    ray_address: str | None = None  # with backend "ray": HOST:PORT of a running cluster (None: RAY_ADDRESS or local)
    overwrite: bool = False

    def to_json_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_kwargs(cls, **kw) -> "Config":
        names = {f.name for f in fields(cls)}
        unknown = set(kw) - names
        if unknown:
            raise TypeError(f"unknown option(s): {', '.join(sorted(unknown))}")
        return cls(**kw)


#: Options that only matter to some stages: an option changed from its default in a run without any
#: of them has no effect, and the run says so (a warning, not an error: Makefiles share option sets).
OPTION_STAGES = {
    "detector": ("detect",), "det_threshold": ("detect",), "det_nms": ("detect",), "det_size": ("detect",),
    "detect_every": ("detect",), "track_max_gap": ("track",), "per_shot": ("track",),
    "landmarker": ("landmarks",), "smooth_min_cutoff": ("landmarks",), "smooth_beta": ("landmarks",),
    "align_template": ("align",), "crop_size": ("align",), "crop_margin": ("align",),
    "crops_in_store": ("crop",), "images": ("crop",), "image_format": ("crop",), "write_images": ("crop",),
    "track_videos": ("crop",), "parser": ("parse",),
    "embed": ("embed",), "embed_dtype": ("embed",), "embed_pool": ("embed",), "embed_batch": ("embed",),
    **{f"mel_{k}": ("mel",) for k in ("n_mels", "n_fft", "hop", "window", "fmin", "fmax", "log_floor", "deltas",
                                      "delta_window")},
    **{f"vggish_{k}": ("vggish",) for k in ("hop", "pad", "postprocess", "batch_size")},
    **{f"whisper_{k}": ("whisper",) for k in ("model", "layer", "batch_size", "fp32")},
    "fps": ("detect", "track", "landmarks", "align", "pose", "crop", "parse", "embed"),
    "max_side": ("detect", "track", "landmarks", "align", "pose", "crop", "parse", "embed"),
}


def ineffective_options(config: "Config") -> list[str]:
    """CLI spellings (``--mel-hop``) of the options set away from their defaults that no stage of
    ``config.stages`` uses, and of run options that need another option (``--ray-address`` without
    ``--backend ray``, ``--workers-per-device`` without a CUDA ``--device``)."""
    default = Config()
    stages = set(config.stages or [])
    out = [name for name, users in OPTION_STAGES.items()
           if getattr(config, name) != getattr(default, name) and not stages & set(users)]
    if config.ray_address and config.backend != "ray":
        out.append("ray_address")
    if config.workers_per_device != default.workers_per_device and (
            config.backend == "ray" or not str(config.device).startswith("cuda")):
        out.append("workers_per_device")
    spelling = {"image_format": "--format", "write_images": "--no-image-files",
                "crops_in_store": "--no-store-crops"}
    return [spelling.get(n, "--" + n.replace("_", "-")) for n in out]

