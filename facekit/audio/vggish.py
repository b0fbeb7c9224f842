"""The ``vggish`` stage: VGGish embeddings of the 16 kHz mono track -> ``audio/vggish/{data,t}``.

VGGish (Hershey et al., ICASSP 2017; tensorflow/models research/audioset/vggish) is a VGG-like
network over 0.96 s patches of log-mel spectrogram that outputs a 128-D embedding. This module is
our own implementation of the TensorFlow reference:

Preprocessing (``mel_features.py`` + ``vggish_input.py`` of the reference, here in NumPy, float64):
16 kHz mono; frames of 400 samples (25 ms) every 160 samples (10 ms), no padding (frame ``j``
covers samples ``[160 j, 160 j + 400)``); periodic Hann window; magnitude of a 512-point real FFT
(the next power of two); 64 HTK-mel triangular bands 125-7500 Hz (the DC bin excluded);
``log(mel + 0.01)``. Examples are 96 consecutive log-mel frames (0.96 s of frame steps, 0.975 s of
audio) starting every ``hop`` frames: example ``k`` is frames ``[k h, k h + 96)``, i.e. samples
``[160 k h, 160 k h + 15600)``, centred at ``t_k = start_sec + k * hop_sec + 0.4875`` seconds.
With the default hop of 0.96 s this is exactly the reference's framing. Incomplete examples at the
end are dropped (as the reference does): audio shorter than 0.975 s gives no example, and less
than one ``hop`` of the tail is in no example. With ``pad`` the waveform is zero-padded at the end
so that the last example reaches past the last sample (silence is ``log(0.01)`` after the mel step).

Network (``vggish_slim.py``): conv3x3 64 - pool - 128 - pool - 256, 256 - pool - 512, 512 - pool
(ReLU after every conv, 2x2 max-pools), flatten in (time, frequency, channel) order, fc 4096 -
4096 (ReLU) - 128. The 128-D output is the *pre-activation* of the embedding layer, as in the
TensorFlow reference since tensorflow/models PR #9080 (Aug 2020: "VGGish embeddings are
pre-activation, not post-activation"). torchvggish (harritaylor; its weights are the converted
TensorFlow checkpoint) keeps a ReLU after that layer, so its outputs are ``max(ours, 0)``.

Post-processing (``vggish_postprocess.py``, optional): PCA with whitening ``E @ (x - mu)``, clip to
[-2, 2], map to [0, 255] and truncate to integers (the reference casts to uint8; torchvggish
rounds instead). We store those integers as float32 0..255 (``data`` is float32 always).
"""

from __future__ import annotations

import math

import numpy as np

from .. import stages, zoo
from ..media import SAMPLE_RATE

#: VGGish preprocessing constants (vggish_params.py of the reference).
VGGISH_SR = 16000  # Hz
STFT_WIN = 400  # samples (25 ms)
STFT_HOP = 160  # samples (10 ms)
N_FFT = 512  # next power of two >= STFT_WIN
N_MELS = 64
MEL_FMIN = 125.0  # Hz
MEL_FMAX = 7500.0  # Hz
LOG_OFFSET = 0.01  # log(mel + LOG_OFFSET)
EXAMPLE_FRAMES = 96  # log-mel frames per example (0.96 s of 10 ms steps)
FRAME_SEC = STFT_HOP / VGGISH_SR  # 0.01 s between log-mel frames
EXAMPLE_SEC = EXAMPLE_FRAMES * FRAME_SEC  # 0.96 s, the reference's example window and hop
EXAMPLE_SAMPLES = (EXAMPLE_FRAMES - 1) * STFT_HOP + STFT_WIN  # 15600 samples = 0.975 s of audio
EXAMPLE_CENTRE_SEC = EXAMPLE_SAMPLES / 2 / VGGISH_SR  # 0.4875 s from an example's first sample
EMBED_DIM = 128
QUANT_MIN, QUANT_MAX = -2.0, 2.0  # post-processing clip range before 8-bit quantisation
LOGMEL_CHUNK = 4096  # log-mel frames computed at once (~41 s of audio; bounds the float64 temporaries)

#: torchvggish state-dict names -> ours (the TensorFlow reference's scope names).
TORCHVGGISH_NAMES = {
    "features.0": "conv1", "features.3": "conv2", "features.6": "conv3_1", "features.8": "conv3_2",
    "features.11": "conv4_1", "features.13": "conv4_2",
    "embeddings.0": "fc1_1", "embeddings.2": "fc1_2", "embeddings.4": "fc2",
}

assert SAMPLE_RATE == VGGISH_SR  # facekit decodes audio at VGGish's rate; nothing is resampled here


# ----------------------------------------------------------------------------- preprocessing

def periodic_hann(n: int) -> np.ndarray:
    """Periodic Hann window [n] float64 (a full cosine period of n samples; Matlab's "periodic")."""
    return 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n) / n)


def _hz_to_mel(hz):
    """HTK mel scale: 1127 ln(1 + f / 700)."""
    return 1127.0 * np.log(1.0 + np.asarray(hz, np.float64) / 700.0)


def mel_matrix(n_mels: int = N_MELS, n_bins: int = N_FFT // 2 + 1, sr: int = VGGISH_SR,
               fmin: float = MEL_FMIN, fmax: float = MEL_FMAX) -> np.ndarray:
    """[n_bins, n_mels] float64 HTK triangular filters (triangles linear in mel, peak 1, no norm).

    Band ``i`` rises from edge ``i`` to ``i + 1`` and falls to ``i + 2`` of ``n_mels + 2`` edges
    equally spaced in mel between ``fmin`` and ``fmax``; the DC bin gets no weight.
    """
    if not 0.0 <= fmin < fmax <= sr / 2:
        raise ValueError(f"need 0 <= fmin < fmax <= {sr / 2} Hz, got {fmin}, {fmax}")
    bins_mel = _hz_to_mel(np.linspace(0.0, sr / 2, n_bins))
    edges = np.linspace(_hz_to_mel(fmin), _hz_to_mel(fmax), n_mels + 2)
    lo, mid, hi = edges[:-2], edges[1:-1], edges[2:]
    rising = (bins_mel[:, None] - lo) / (mid - lo)
    falling = (hi - bins_mel[:, None]) / (hi - mid)
    w = np.maximum(0.0, np.minimum(rising, falling))
    w[0, :] = 0.0
    return w


_MEL = mel_matrix()
_WINDOW = periodic_hann(STFT_WIN)


def _frames(x: np.ndarray, length: int, hop: int) -> np.ndarray:
    """[n, length, ...] view of the complete windows of ``x`` along axis 0 (no padding)."""
    n = 0 if x.shape[0] < length else 1 + (x.shape[0] - length) // hop
    return np.lib.stride_tricks.as_strided(x, shape=(n, length) + x.shape[1:],
                                           strides=(x.strides[0] * hop,) + x.strides, writeable=False)


def log_mel(samples: np.ndarray, dtype=np.float64) -> np.ndarray:
    """VGGish log-mel spectrogram [T, 64] (float64, or ``dtype``) of 16 kHz mono ``samples`` [S].

    ``T = 1 + (S - 400) // 160`` (0 when S < 400); frame ``j`` covers samples [160 j, 160 j + 400).
    Computed in float64 over chunks of frames (bounded memory for long tracks), then cast.
    """
    x = np.ascontiguousarray(samples)
    if x.ndim != 1:
        raise ValueError(f"expected mono samples [S], got shape {x.shape}")
    frames = _frames(x, STFT_WIN, STFT_HOP)
    out = np.empty((len(frames), N_MELS), dtype)
    for a in range(0, len(frames), LOGMEL_CHUNK):
        spec = np.abs(np.fft.rfft(frames[a:a + LOGMEL_CHUNK] * _WINDOW, N_FFT))
        out[a:a + LOGMEL_CHUNK] = np.log(spec @ _MEL + LOG_OFFSET)
    return out


def n_examples(n_samples: int, hop_frames: int) -> int:
    """Number of complete examples in ``n_samples`` samples with a hop of ``hop_frames`` frames."""
    t = 0 if n_samples < STFT_WIN else 1 + (n_samples - STFT_WIN) // STFT_HOP
    return 0 if t < EXAMPLE_FRAMES else 1 + (t - EXAMPLE_FRAMES) // hop_frames


def pad_length(n_samples: int, hop_frames: int) -> int:
    """Length to zero-pad ``n_samples`` to so that the last example reaches the last sample."""
    if n_samples == 0:
        return 0
    step = hop_frames * STFT_HOP
    k = 1 + max(0, math.ceil((n_samples - EXAMPLE_SAMPLES) / step))
    return max(n_samples, (k - 1) * step + EXAMPLE_SAMPLES)


def examples_view(samples: np.ndarray, hop_frames: int = EXAMPLE_FRAMES, pad: bool = False) -> np.ndarray:
    """Examples [K, 96, 64] float32 as a read-only strided view of one float32 log-mel array.

    Overlapping examples (small hops) share memory: a track costs its log-mel, not K copies.
    Example ``k`` is log-mel frames ``[k * hop_frames, k * hop_frames + 96)``; incomplete ones are
    dropped unless ``pad`` (zeros appended; see the module docstring).
    """
    x = np.asarray(samples)
    if pad and x.size:
        x = np.concatenate([x, np.zeros(pad_length(x.size, hop_frames) - x.size, x.dtype)])
    k = n_examples(x.size, hop_frames)
    if k == 0:
        return np.zeros((0, EXAMPLE_FRAMES, N_MELS), np.float32)
    # only the samples the examples use
    lm = log_mel(x[:(k - 1) * hop_frames * STFT_HOP + EXAMPLE_SAMPLES], np.float32)
    return _frames(lm, EXAMPLE_FRAMES, hop_frames)


def waveform_to_examples(samples: np.ndarray, hop_frames: int = EXAMPLE_FRAMES, pad: bool = False) -> np.ndarray:
    """Examples [K, 96, 64] float32 (log-mel patches, a contiguous copy) of 16 kHz mono ``samples``;
    the reference's ``vggish_input.waveform_to_examples`` for 16 kHz input and ``hop_frames`` 96."""
    return np.array(examples_view(samples, hop_frames, pad), np.float32)  # a writable copy


def example_times(k: int, hop_sec: float, start_sec: float = 0.0) -> np.ndarray:
    """Centre time in seconds [k] float64 of each example: ``start_sec + i * hop_sec + 0.4875``."""
    return start_sec + np.arange(k, dtype=np.float64) * hop_sec + EXAMPLE_CENTRE_SEC


def hop_frames_of(hop_sec: float) -> int:
    """A hop in seconds -> whole 10 ms log-mel frames; ValueError unless a positive multiple of 10 ms."""
    h = round(hop_sec / FRAME_SEC)
    if not (hop_sec > 0 and h >= 1 and abs(h * FRAME_SEC - hop_sec) < 1e-6):
        raise ValueError(f"hop must be a positive multiple of {FRAME_SEC} s (a whole number of log-mel "
                         f"frames), got {hop_sec}")
    return h


# ----------------------------------------------------------------------------- post-processing

def postprocess(embeddings: np.ndarray, pca_matrix: np.ndarray, pca_means: np.ndarray) -> np.ndarray:
    """PCA (with whitening) + 8-bit quantisation of [N, 128] embeddings -> [N, 128] float32 in 0..255.

    ``pca_matrix`` [128, 128] and ``pca_means`` [128] (float64, vggish_pca_params); the values are
    the integers ``floor(255 / 4 * (clip(E @ (x - mu), -2, 2) + 2))`` as in the TF reference.
    """
    return quantize(pca_whiten(embeddings, pca_matrix, pca_means))


def pca_whiten(embeddings: np.ndarray, pca_matrix: np.ndarray, pca_means: np.ndarray) -> np.ndarray:
    """[N, 128] float64: ``(E @ (x - mu)).T`` per embedding (before clipping and quantisation)."""
    x = np.asarray(embeddings, np.float64)
    return (np.asarray(pca_matrix, np.float64) @ (x.T - np.asarray(pca_means, np.float64).reshape(-1, 1))).T


def quantize(values: np.ndarray) -> np.ndarray:
    """Clip to [-2, 2] and map to the integers 0..255 (truncation, like the reference's uint8 cast)."""
    scaled = (np.clip(values, QUANT_MIN, QUANT_MAX) - QUANT_MIN) * (255.0 / (QUANT_MAX - QUANT_MIN))
    return scaled.astype(np.uint8).astype(np.float32)


# ----------------------------------------------------------------------------- network

def _torch():
    try:
        import torch
    except ImportError as e:
        raise zoo.ModelError(f"the vggish stage needs PyTorch ({e}): pip install torch") from None
    return torch


def build_network():
    """A VGGish network (torch ``nn.Module``, random weights): [N, 96, 64] log-mel -> [N, 128] float32.

    Layer names are the TF reference's scopes (conv1 ... conv4_2, fc1_1, fc1_2, fc2); the output is the
    pre-activation of ``fc2`` (no ReLU), as the reference's ``vggish/embedding``.
    """
    torch = _torch()
    nn = torch.nn

    class VGGish(nn.Module):
        def __init__(self):
            super().__init__()
            chans = [("conv1", 1, 64), ("conv2", 64, 128), ("conv3_1", 128, 256), ("conv3_2", 256, 256),
                     ("conv4_1", 256, 512), ("conv4_2", 512, 512)]
            for name, cin, cout in chans:
                setattr(self, name, nn.Conv2d(cin, cout, kernel_size=3, padding=1))
            # after four 2x2 pools: 96x64 -> 6x4 (time x frequency) with 512 channels
            self.fc1_1 = nn.Linear(6 * 4 * 512, 4096)
            self.fc1_2 = nn.Linear(4096, 4096)
            self.fc2 = nn.Linear(4096, EMBED_DIM)

        def forward(self, x):
            f = torch.nn.functional
            if x.dim() == 3:
                x = x.unsqueeze(1)  # [N, 1, 96, 64]
            x = f.max_pool2d(f.relu(self.conv1(x)), 2)
            x = f.max_pool2d(f.relu(self.conv2(x)), 2)
            x = f.max_pool2d(f.relu(self.conv3_2(f.relu(self.conv3_1(x)))), 2)
            x = f.max_pool2d(f.relu(self.conv4_2(f.relu(self.conv4_1(x)))), 2)
            # flatten as TensorFlow's NHWC: (time, frequency, channel)
            x = x.permute(0, 2, 3, 1).reshape(x.shape[0], -1)
            x = f.relu(self.fc1_2(f.relu(self.fc1_1(x))))
            return self.fc2(x)  # pre-activation embedding (no final ReLU)

    return VGGish()


def _load_checkpoint(torch, path, name: str):
    """``torch.load`` a plain checkpoint safely (``weights_only``); numpy arrays are allowed."""
    from ..face.fan import _load_state

    np_globals = []
    core = getattr(np, "_core", None) or np.core
    for mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
        np_globals.append((core.multiarray._reconstruct, f"{mod}._reconstruct"))
    np_globals += [np.ndarray, np.dtype, type(np.dtype(np.float32)), type(np.dtype(np.float64))]
    safe = getattr(torch.serialization, "safe_globals", None)
    if safe is None:  # torch < 2.5: numpy arrays cannot be loaded safely; tensors still can
        return _load_state(torch, path, name)
    with safe(np_globals):
        return _load_state(torch, path, name)


def load_network(path, device: str = "cpu"):
    """Our VGGish with the state dict at ``path`` (torchvggish names or ours), on ``device``, eval mode."""
    torch = _torch()
    state = _load_checkpoint(torch, path, "vggish")
    mapped = {}
    for k, v in state.items():
        layer, _, kind = k.rpartition(".")
        mapped[f"{TORCHVGGISH_NAMES.get(layer, layer)}.{kind}"] = torch.as_tensor(v)
    with torch.device("meta"):  # no random initialisation of 72M parameters: the file sets them all
        net = build_network()
    expected = net.state_dict()
    missing = sorted(set(expected) - set(mapped))
    unexpected = sorted(set(mapped) - set(expected))
    if missing or unexpected:
        raise zoo.ModelError(f"model vggish: {path} is not a VGGish state dict (missing {missing[:4]}, "
                             f"unexpected {unexpected[:4]}); expected torchvggish's vggish-10086976.pth layout")
    bad = [k for k in expected if tuple(mapped[k].shape) != tuple(expected[k].shape)]
    if bad:
        raise zoo.ModelError(f"model vggish: {path}: wrong shape for {bad[0]} "
                             f"({tuple(mapped[bad[0]].shape)}, expected {tuple(expected[bad[0]].shape)})")
    net.load_state_dict({k: v.float().contiguous() for k, v in mapped.items()}, assign=True)
    return net.to(device).eval()


def load_pca(path) -> tuple[np.ndarray, np.ndarray]:
    """(pca_matrix [128, 128], pca_means [128]) float64 from torchvggish's .pth or the TF .npz."""
    try:
        if str(path).endswith(".npz"):
            with np.load(path) as z:
                params = {k: z[k] for k in z.files}
        else:
            params = _load_checkpoint(_torch(), path, "vggish-pca")
        m = np.asarray(params["pca_eigen_vectors"], np.float64)
        mu = np.asarray(params["pca_means"], np.float64).reshape(-1)
    except zoo.ModelError:
        raise
    except Exception as e:  # noqa: BLE001 - missing keys, unreadable npz...
        raise zoo.ModelError(f"model vggish-pca: {path} does not hold VGGish PCA parameters "
                             f"({type(e).__name__}: {e})") from None
    if m.shape != (EMBED_DIM, EMBED_DIM) or mu.shape != (EMBED_DIM,):
        raise zoo.ModelError(f"model vggish-pca: {path}: bad shapes {m.shape}, {mu.shape} "
                             f"(expected ({EMBED_DIM}, {EMBED_DIM}) and ({EMBED_DIM},))")
    return m, mu


# ----------------------------------------------------------------------------- stage

@stages.register
class VGGishStage(stages.Stage):
    """Writes ``audio/vggish/data`` [K, 128] float32 and ``audio/vggish/t`` [K] float64 (seconds)."""

    name = "vggish"
    consumes = "audio"
    outputs = ("audio/vggish",)

    def __init__(self, config):
        super().__init__(config)
        c = config
        try:
            self.hop_frames = hop_frames_of(c.vggish_hop)
        except ValueError as e:
            raise stages.StageError(f"vggish: --vggish-hop: {e}") from None
        if c.vggish_batch_size < 1:
            raise stages.StageError(f"vggish: batch size must be >= 1, got {c.vggish_batch_size}")
        from .. import device as device_mod

        self.device = device_mod.torch_device(c)  # the worker's pinned GPU, or cpu (DeviceError if unusable)
        self.on_gpu = self.device != "cpu"
        try:
            self.weights = zoo.resolve("vggish", c.weights)
            self.pca = zoo.resolve("vggish-pca", c.weights) if c.vggish_postprocess else None
            self.net = load_network(self.weights.path, self.device)
            self.pca_params = load_pca(self.pca.path) if self.pca else None
        except zoo.ModelError as e:
            raise stages.StageError(str(e)) from None

    @property
    def params(self) -> dict:
        c = self.config
        return {"model": "vggish", "weights_sha256": self.weights.sha256, "sample_rate": VGGISH_SR,
                "stft_window": STFT_WIN, "stft_hop": STFT_HOP, "n_fft": N_FFT, "window": "periodic hann",
                "spectrum": "magnitude", "n_mels": N_MELS, "fmin": MEL_FMIN, "fmax": MEL_FMAX,
                "mel_scale": "htk", "log": f"log(mel + {LOG_OFFSET})", "example_frames": EXAMPLE_FRAMES,
                "hop_frames": self.hop_frames, "pad": bool(c.vggish_pad), "embedding": "pre-activation fc2",
                "postprocess": bool(c.vggish_postprocess),
                "pca_sha256": self.pca.sha256 if self.pca else None}

    def _attrs(self, status: str) -> dict:
        a = {**self.params, "audio_status": status, "hop_sec": self.hop_frames * FRAME_SEC,
             "win_sec": EXAMPLE_SAMPLES / VGGISH_SR, "t": "example centre, seconds (first sample + 0.4875 s)",
             "units": "quantised PCA 0..255" if self.config.vggish_postprocess else "embedding (pre-activation)"}
        if self.config.vggish_postprocess:
            a["quantize_range"] = [QUANT_MIN, QUANT_MAX]
        return a

    def embed(self, examples: np.ndarray) -> np.ndarray:
        """[K, 96, 64] log-mel examples (any array or view) -> [K, 128] float32 (post-processed when
        configured), ``vggish_batch_size`` examples per forward pass."""
        torch = _torch()
        out = np.zeros((len(examples), EMBED_DIM), np.float32)
        bs = self.config.vggish_batch_size
        from ..device import cudnn_mode

        with torch.inference_mode(), cudnn_mode(self.device, exact=False):
            for a in range(0, len(examples), bs):
                x = torch.from_numpy(np.array(examples[a:a + bs], np.float32)).to(self.device)  # a copy
                out[a:a + bs] = self.net(x).float().cpu().numpy()
        if self.pca_params is not None:
            out = postprocess(out, *self.pca_params)
        return out

    def on_audio(self, samples, start_sec: float, writer) -> None:
        ex = examples_view(np.asarray(samples, np.float32), self.hop_frames, self.config.vggish_pad)
        self._write(writer, self.embed(ex), example_times(len(ex), self.hop_frames * FRAME_SEC, start_sec), "ok")

    def on_no_audio(self, writer) -> None:
        self._write(writer, np.zeros((0, EMBED_DIM), np.float32), np.zeros(0), "no audio")

    def _write(self, writer, data, t, status):
        from ..store import set_attrs

        g = writer.group.require_group("audio/vggish")
        writer.create("audio/vggish/data", data=np.asarray(data, np.float32), growable=False)
        writer.create("audio/vggish/t", data=np.asarray(t, np.float64), growable=False)
        set_attrs(g, self._attrs(status))
