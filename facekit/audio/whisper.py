"""The ``whisper`` stage: OpenAI Whisper encoder hidden states -> ``audio/whisper/{data,t}``.

Any openai-whisper checkpoint is selected by name (``--whisper-model``; registry names
``whisper-tiny`` ... ``whisper-large-v3-turbo``, see ``MODELS``) and run with openai-whisper's
own model code (``whisper.model.AudioEncoder``, the encoder of ``whisper.model.Whisper``).

Input (exactly as Whisper sees one 30 s segment): the 16 kHz mono track is cut into
consecutive **non-overlapping 30 s windows** (480000 samples); each window is zero-padded to
30 s with ``whisper.audio.pad_or_trim`` and turned into a log-Mel spectrogram by
``whisper.audio.log_mel_spectrogram`` (n_mels from the checkpoint: 80, or 128 for large-v3 and
turbo), i.e. [n_mels, 3000] per window, normalised per window (Whisper's floor at max - 8 dB).

Time of each output frame (the derivation): the STFT is centred (n_fft 400, hop 160 samples)
and Whisper drops its last frame, so mel frame ``j`` is centred on sample ``160 j``. ``conv1``
(kernel 3, stride 1, padding 1) keeps that grid; ``conv2`` (kernel 3, stride 2, padding 1) makes
output ``i`` from mel frames ``2i-1, 2i, 2i+1``, so encoder frame ``i`` is centred on mel frame
``2i``, i.e. on sample ``320 i``: **t = start + 0.02 i seconds** (50 Hz), ``start`` being the
time of the first audio sample on the container clock. Its conv receptive field is samples
``320 i - 520 .. 320 i + 520`` (65 ms; stored as ``win_sec``); self-attention then mixes the
whole 30 s window (``context_sec``).

Stitching: window ``k`` holds frames ``1500 k .. 1500 k + 1499`` of the track, so the windows
tile the timeline with no gap and no duplicate. Frames centred on padding are dropped: the
track of ``S`` samples keeps ``T = ceil(S / 320)`` frames (every frame centred inside the
recording), so ``t[-1] < duration``. Effect at window boundaries: frames within a few hundred
ms of a 30 s boundary see the edge of their window as the start/end of the recording (no
attention across windows, log-Mel normalised per window), as in Whisper's own 30 s
processing; each window equals a standalone run on its 30 s of audio.

Layers (``--whisper-layer``), numbered as Hugging Face's ``output_hidden_states``:
``0`` = after the conv stem + positional embedding (the input of block 1), ``k`` (1..L-1) =
output of residual block ``k``, ``L`` = ``last`` = ``-1`` = the encoder output (block L then
the final LayerNorm ``ln_post``; what the decoder attends to). Negative indices count from
``L`` (``-2`` = block L-1). A comma list (``"2,3,-1"``) stores the mean of those states.

Output: ``data`` [T, n_audio_state] float32 (384 tiny, 512 base, 768 small, 1024 medium,
1280 large), ``t`` [T] float64 seconds. float16 on CUDA, float32 on CPU (stored as float32).
"""

from __future__ import annotations

import math
import re

import numpy as np

from .. import stages, zoo
from ..media import SAMPLE_RATE

#: Whisper's fixed input window: 30 s of 16 kHz audio (whisper.audio.N_SAMPLES).
WINDOW_SAMPLES = 480_000
#: Samples per encoder frame: mel hop 160 samples x conv2 stride 2 (20 ms, 50 Hz).
FRAME_SAMPLES = 320
#: Encoder frames per 30 s window (whisper.audio.N_FRAMES // 2).
WINDOW_FRAMES = WINDOW_SAMPLES // FRAME_SAMPLES
#: Conv-stem receptive field of one encoder frame: samples 320 i - 520 .. 320 i + 520.
RECEPTIVE_SAMPLES = 1040
#: Default 30 s windows per encoder call.
DEFAULT_BATCH = 4

#: Registry names of the checkpoints (facekit.zoo registers them with URL and sha256).
MODELS = tuple(f"whisper-{size}" for size in zoo._WHISPER)
#: Other spellings accepted by --whisper-model (openai-whisper's own aliases included).
ALIASES = {"large": "whisper-large-v3", "turbo": "whisper-large-v3-turbo"}


def canonical_name(name: str) -> str:
    """``tiny.en`` / ``whisper-tiny.en`` / ``turbo`` / ``whisper-turbo`` -> the registry name. Raises StageError."""
    n = name.strip()
    short = n[len("whisper-"):] if n.startswith("whisper-") else n
    if short in ALIASES:
        return ALIASES[short]
    if "whisper-" + short in MODELS:
        return "whisper-" + short
    raise stages.StageError(f"whisper: unknown model {name!r} (known: {', '.join(MODELS)}; "
                            f"aliases: {', '.join(ALIASES)})")


def parse_layers(spec, n_layers: int) -> list[int]:
    """``--whisper-layer`` -> sorted hidden-state indices in 0..n_layers (see the module docstring)."""
    text = str(spec).strip().lower()
    if text in ("", "last"):
        return [n_layers]
    out = []
    for part in text.split(","):
        part = part.strip()
        if part == "last":
            i = n_layers
        elif re.fullmatch(r"[+-]?\d+", part):
            i = int(part)
            if not -(n_layers + 1) <= i <= n_layers:
                raise stages.StageError(f"whisper: layer {i} out of range for a {n_layers}-block encoder "
                                        f"(0..{n_layers} or -1..-{n_layers + 1})")
            i = i + n_layers + 1 if i < 0 else i
        else:
            raise stages.StageError(f"whisper: bad --whisper-layer {spec!r} (expected last, an integer, "
                                    f"or a comma list such as 2,3,-1)")
        if i in out:
            raise stages.StageError(f"whisper: layer {part!r} given twice in --whisper-layer {spec!r}")
        out.append(i)
    return sorted(out)


def n_frames(n_samples: int) -> int:
    """Encoder frames kept for ``n_samples`` of audio: those centred inside it, ceil(S / 320)."""
    return -(-int(n_samples) // FRAME_SAMPLES)


def frame_times(n: int, start_sec: float = 0.0) -> np.ndarray:
    """Centre time in seconds [n] float64 of encoder frames 0..n-1 (start + 0.02 i)."""
    return start_sec + np.arange(n, dtype=np.float64) * (FRAME_SAMPLES / SAMPLE_RATE)


def load_encoder(path, device=None):
    """Load an openai-whisper checkpoint's encoder: (whisper.model.AudioEncoder in eval mode, dims dict).

    The file must be loadable with ``torch.load(weights_only=True)`` and hold ``dims`` and
    ``model_state_dict`` (the layout of the official checkpoints). Raises StageError otherwise.
    """
    import pickle

    import torch
    from whisper.model import AudioEncoder, ModelDimensions

    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError, AttributeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise stages.StageError(f"whisper: cannot load {path} as a tensors-only torch checkpoint "
                                f"(torch.load weights_only=True): {first}") from None
    if not (isinstance(ckpt, dict) and isinstance(ckpt.get("dims"), dict)
            and isinstance(ckpt.get("model_state_dict"), dict)):
        raise stages.StageError(f"whisper: {path} is not an openai-whisper checkpoint "
                                f"(expected a dict with 'dims' and 'model_state_dict')")
    try:
        dims = ModelDimensions(**ckpt["dims"])
    except TypeError as e:
        raise stages.StageError(f"whisper: {path}: bad 'dims' ({e})") from None
    if dims.n_audio_ctx != WINDOW_FRAMES or dims.n_mels not in (80, 128):
        raise stages.StageError(f"whisper: {path}: n_audio_ctx={dims.n_audio_ctx}, n_mels={dims.n_mels}; "
                                f"facekit runs encoders of 30 s windows ({WINDOW_FRAMES} frames) on 80 or 128 "
                                f"mel bands, as every openai-whisper checkpoint")
    enc = AudioEncoder(dims.n_mels, dims.n_audio_ctx, dims.n_audio_state, dims.n_audio_head, dims.n_audio_layer)
    sd = {k[len("encoder."):]: v for k, v in ckpt["model_state_dict"].items() if k.startswith("encoder.")}
    if "positional_embedding" not in sd:  # a buffer: older exports may leave it out; it is fixed sinusoids
        sd["positional_embedding"] = enc.positional_embedding
    try:
        enc.load_state_dict(sd, strict=True)
    except RuntimeError as e:
        raise stages.StageError(f"whisper: {path}: encoder weights do not fit its dims "
                                f"({str(e).splitlines()[0]})") from None
    del ckpt, sd
    enc.eval().requires_grad_(False)
    if device is not None:
        enc.to(device)
    return enc, dims


def _digest(samples: np.ndarray) -> bytes:
    """Identity of a track's samples (its length and bytes), to find its precomputed features."""
    import hashlib

    return hashlib.blake2b(samples.tobytes(), digest_size=20, person=str(samples.size).encode()[:16]).digest()


def hidden_states(encoder, mel, layers: list[int]):
    """Mean of the requested hidden states of ``encoder`` for ``mel`` [B, n_mels, 3000] -> [B, 1500, D].

    The same operations as ``whisper.model.AudioEncoder.forward``, stopping after the deepest
    requested layer (0 = conv stem + positional embedding, k = block k, L = ln_post(block L)).
    """
    import torch.nn.functional as F

    n_layers = len(encoder.blocks)
    wanted, acc = set(layers), None

    def take(h):
        nonlocal acc
        h = h.float()
        acc = h if acc is None else acc + h

    x = F.gelu(encoder.conv1(mel))
    x = F.gelu(encoder.conv2(x))
    x = x.permute(0, 2, 1)
    x = (x + encoder.positional_embedding).to(x.dtype)
    if 0 in wanted:
        take(x)
    for k, block in enumerate(encoder.blocks, start=1):
        if k > max(layers):
            break
        x = block(x)
        if k == n_layers and n_layers in wanted:
            take(encoder.ln_post(x))
        elif k in wanted:
            take(x)
    return acc / len(layers)


@stages.register
class WhisperStage(stages.Stage):
    """Whisper encoder features at 50 Hz: ``audio/whisper/data`` [T, D] float32, ``t`` [T] float64 s."""

    name = "whisper"
    consumes = "audio"
    outputs = ("audio/whisper",)

    def __init__(self, config):
        super().__init__(config)
        c = config
        self.model_name = canonical_name(c.whisper_model)
        if int(c.whisper_batch_size) < 1:
            raise stages.StageError(f"whisper: --whisper-batch-size must be >= 1, not {c.whisper_batch_size}")
        self.batch = int(c.whisper_batch_size)
        self._precomputed: dict[bytes, np.ndarray] = {}  # digest of a track's samples -> its features
        try:
            import torch  # noqa: F401
            import whisper.audio  # noqa: F401  (openai-whisper: the reference log-Mel and model code)
        except ImportError as e:
            raise stages.StageError(f"whisper: openai-whisper is not installed ({e}); run "
                                    f"`pip install 'facekit[whisper]' && pip install --no-deps openai-whisper`"
                                    ) from None
        from .. import device as device_mod

        self.device = torch.device(device_mod.torch_device(c))  # the worker's pinned GPU, or cpu
        self.on_gpu = self.device.type == "cuda"
        self.half = self.device.type == "cuda" and not c.whisper_fp32  # openai-whisper's GPU default
        weights = dict(c.weights or {})
        if self.model_name not in weights and c.whisper_model in weights:  # --weights turbo=PATH
            weights[self.model_name] = weights[c.whisper_model]
        self.resolved = zoo.resolve(self.model_name, weights)  # ModelNotFoundError: says what to do
        # float32 weights; on CUDA the input is float16 and whisper's Conv1d/Linear cast their weights
        # to it (LayerNorm computes in float32): openai-whisper's own fp16 path
        self.encoder, self.dims = load_encoder(self.resolved.path, self.device)
        self.n_layers = self.dims.n_audio_layer
        self.layers = parse_layers(c.whisper_layer, self.n_layers)

    @property
    def params(self) -> dict:
        return {"model": self.model_name, "weights_sha256": self.resolved.sha256,
                "layers": self.layers, "n_layers": self.n_layers, "reduce": "mean" if len(self.layers) > 1 else "none",
                "dtype": "float16" if self.half else "float32", "sample_rate": SAMPLE_RATE,
                "n_mels": self.dims.n_mels, "mel": "whisper.audio.log_mel_spectrogram(pad_or_trim(window))",
                "window_sec": WINDOW_SAMPLES / SAMPLE_RATE, "windows": "non-overlapping",
                "hop_sec": FRAME_SAMPLES / SAMPLE_RATE, "frames": "centre inside the audio: T = ceil(S / 320)"}

    def _attrs(self, status: str) -> dict:
        return {**self.params, "audio_status": status, "win_sec": RECEPTIVE_SAMPLES / SAMPLE_RATE,
                "context_sec": WINDOW_SAMPLES / SAMPLE_RATE, "dim": self.dims.n_audio_state,
                "weights_origin": self.resolved.origin,
                "layer_numbering": "0 = conv stem + positional embedding, k = residual block k, "
                                   f"{self.n_layers} = encoder output after ln_post",
                "t": "frame centre, seconds (start + 0.02 i)"}

    def encode(self, samples: np.ndarray) -> np.ndarray:
        """Features [T, D] float32 of mono 16 kHz float32 ``samples`` [S]; T = ceil(S / 320).

        Served from the cross-video batch of ``precompute_audio`` when these very samples were in it."""
        samples = np.asarray(samples, dtype=np.float32).reshape(-1)
        hit = self._precomputed.pop(_digest(samples), None)
        return hit if hit is not None else self.encode_many([samples])[0]

    def encode_many(self, tracks) -> list[np.ndarray]:
        """``encode`` of several tracks, their 30 s windows batched together (``--whisper-batch-size``
        windows per encoder call, across tracks): short clips share encoder calls."""
        import torch
        from whisper.audio import log_mel_spectrogram, pad_or_trim

        tracks = [np.asarray(x, dtype=np.float32).reshape(-1) for x in tracks]
        outs = [np.zeros((n_frames(x.size), self.dims.n_audio_state), np.float32) for x in tracks]
        windows = [(i, k) for i, x in enumerate(tracks) for k in range(math.ceil(x.size / WINDOW_SAMPLES))]
        dtype = torch.float16 if self.half else torch.float32
        from ..device import cudnn_mode

        # --whisper-fp32: no TF32 rounding either; fp16: PyTorch's defaults (under the process-wide lock)
        exact = cudnn_mode(str(self.device), exact=not self.half)
        with torch.inference_mode(), exact:
            for b0 in range(0, len(windows), self.batch):
                part = windows[b0:b0 + self.batch]
                mels = [log_mel_spectrogram(pad_or_trim(torch.from_numpy(
                            tracks[i][k * WINDOW_SAMPLES:(k + 1) * WINDOW_SAMPLES])), self.dims.n_mels,
                            device=self.device) for i, k in part]
                h = hidden_states(self.encoder, torch.stack(mels).to(dtype), self.layers).cpu().numpy()
                for j, (i, k) in enumerate(part):
                    f0 = k * WINDOW_FRAMES
                    keep = min(WINDOW_FRAMES, len(outs[i]) - f0)
                    outs[i][f0:f0 + keep] = h[j, :keep]
        return outs

    def precompute_audio(self, tracks) -> None:
        """Encode the tracks of the next few videos together (the engine calls this before
        processing them one by one); ``on_audio`` then takes each video's features from here.
        Holds only the last group's results."""
        tracks = [np.asarray(x, dtype=np.float32).reshape(-1) for x in tracks]
        self._precomputed = {}
        if tracks:
            self._precomputed = {_digest(x): y for x, y in zip(tracks, self.encode_many(tracks))}

    def on_audio(self, samples, start_sec: float, writer) -> None:
        if samples is None:
            return self.on_no_audio(writer)
        data = self.encode(samples)
        self._write(writer, data, frame_times(len(data), start_sec), "ok")

    def on_no_audio(self, writer) -> None:
        self._write(writer, np.zeros((0, self.dims.n_audio_state), np.float32), np.zeros(0), "no audio")

    def _write(self, writer, data, t, status):
        from ..store import set_attrs

        g = writer.group.require_group("audio/whisper")
        writer.create("audio/whisper/data", data=data, growable=False)
        writer.create("audio/whisper/t", data=np.asarray(t, np.float64), growable=False)
        set_attrs(g, self._attrs(status))
