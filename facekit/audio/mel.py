"""The ``mel`` stage: log-Mel spectrogram of the 16 kHz mono track -> ``audio/mel/{data,t}``.

Defaults follow common speech practice (Kaldi/Whisper-style front ends): 25 ms Hann window
(``n_fft`` = 400 samples), 10 ms hop (160 samples), 80 Slaney-normalised mel bands over
0-8000 Hz of the power spectrum, in decibels ``10 * log10(max(mel, log_floor))``.
Frames are centred (librosa ``center=True``, zero padding): frame ``i`` is centred at
``start_sec + i * hop / 16000`` seconds, which is what ``t`` stores, so ``T = 1 + S // hop``.
"""

from __future__ import annotations

import numpy as np

from .. import stages
from ..media import SAMPLE_RATE

MEL_BLOCK_FRAMES = 6000  # frames per STFT block (60 s at the default hop): bounds memory on long tracks
DELTA_WINDOW = 2  # frames each side of the HTK/Kaldi delta regression (a 5-frame window)
DELTA_BLOCKS = ("static", "delta", "delta2")


def log_mel(samples: np.ndarray, sr: int = SAMPLE_RATE, n_mels: int = 80, n_fft: int = 400, hop: int = 160,
            window: str = "hann", fmin: float = 0.0, fmax: float | None = 8000.0,
            log_floor: float = 1e-10) -> np.ndarray:
    """Log-Mel features [T, n_mels] float32 (dB) of mono float32 ``samples`` at ``sr`` Hz."""
    import librosa

    samples = np.asarray(samples, dtype=np.float32).reshape(-1)
    if samples.size == 0:
        return np.zeros((0, n_mels), np.float32)
    # centred frames (librosa center=True, zero padding) computed block by block on the padded
    # signal with center=False: the same numbers, with memory bounded by one block of frames
    # instead of the whole track's complex spectrogram (~200 MB for 20 minutes)
    n_frames = 1 + samples.size // hop
    half = n_fft // 2
    padded = np.concatenate([np.zeros(half, np.float32), samples, np.zeros(half + n_fft, np.float32)])
    basis = librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax, htk=False, norm="slaney")
    out = np.empty((n_frames, n_mels), np.float32)
    for a in range(0, n_frames, MEL_BLOCK_FRAMES):
        b = min(a + MEL_BLOCK_FRAMES, n_frames)
        seg = padded[a * hop: (b - 1) * hop + n_fft]
        spec = np.abs(librosa.stft(seg, n_fft=n_fft, hop_length=hop, win_length=n_fft, window=window,
                                   center=False)) ** 2
        mel = basis @ spec
        out[a:b] = (10.0 * np.log10(np.maximum(mel, log_floor))).T
    return out


def deltas(feats: np.ndarray, window: int = DELTA_WINDOW) -> np.ndarray:
    """HTK/Kaldi regression deltas of ``feats`` [T, D] along time: [T, D] float32.

    ``d[t] = sum_{n=1..N} n * (c[t+n] - c[t-n]) / (2 * sum_{n=1..N} n^2)`` with ``N = window``
    (frames each side); frames beyond either end repeat the edge frame (Kaldi clamps the index).
    Acceleration (delta-delta) is this applied to the deltas, as HTK does.
    """
    feats = np.asarray(feats, dtype=np.float64)
    T = feats.shape[0]
    if T == 0:
        return np.zeros(feats.shape, np.float32)
    idx = np.arange(T)
    num = np.zeros_like(feats)
    for n in range(1, window + 1):
        num += n * (feats[np.minimum(idx + n, T - 1)] - feats[np.maximum(idx - n, 0)])
    return (num / (2.0 * sum(n * n for n in range(1, window + 1)))).astype(np.float32)


def with_deltas(feats: np.ndarray, order: int, window: int = DELTA_WINDOW) -> np.ndarray:
    """``feats`` [T, D] followed by its deltas up to ``order`` (0, 1 or 2): [T, D * (1 + order)]."""
    blocks = [np.asarray(feats, np.float32)]
    for _ in range(order):
        blocks.append(deltas(blocks[-1], window))
    return np.concatenate(blocks, axis=1) if order else blocks[0]


def frame_times(n_frames: int, hop: int, sr: int = SAMPLE_RATE, start_sec: float = 0.0) -> np.ndarray:
    """Centre time in seconds of each of ``n_frames`` centred analysis windows."""
    return start_sec + np.arange(n_frames, dtype=np.float64) * hop / sr


@stages.register
class MelStage(stages.Stage):
    name = "mel"
    consumes = "audio"
    outputs = ("audio/mel",)

    def __init__(self, config):
        super().__init__(config)
        c = config
        try:  # bad parameters stop the run before any work, not each video
            log_mel(np.zeros(SAMPLE_RATE // 10, np.float32), SAMPLE_RATE, c.mel_n_mels, c.mel_n_fft, c.mel_hop,
                    c.mel_window, c.mel_fmin, c.mel_fmax, c.mel_log_floor)
        except Exception as e:  # noqa: BLE001 - librosa raises several types
            raise stages.StageError(f"mel: invalid parameters ({type(e).__name__}: {e})") from None
        if c.mel_deltas not in (0, 1, 2):
            raise stages.StageError(f"mel: --mel-deltas must be 0, 1 or 2, not {c.mel_deltas}")
        if c.mel_delta_window < 1:
            raise stages.StageError(f"mel: --mel-delta-window must be >= 1, not {c.mel_delta_window}")

    @property
    def params(self) -> dict:
        c = self.config
        return {"sample_rate": SAMPLE_RATE, "n_mels": c.mel_n_mels, "n_fft": c.mel_n_fft, "hop": c.mel_hop,
                "win_length": c.mel_n_fft, "window": c.mel_window, "fmin": c.mel_fmin, "fmax": c.mel_fmax,
                "log_floor": c.mel_log_floor, "power": 2.0, "mel_scale": "slaney", "norm": "slaney",
                "center": True, "log": "10*log10(max(mel, log_floor)) dB", **self._delta_params()}

    def _delta_params(self) -> dict:
        c = self.config
        if not c.mel_deltas:
            return {}  # absent, so stores made before deltas existed keep matching
        return {"deltas": c.mel_deltas, "delta_window": c.mel_delta_window,
                "delta_formula": "HTK regression, edges repeated; delta2 = deltas of deltas"}

    def _attrs(self, status: str) -> dict:
        c = self.config
        return {**self.params, "audio_status": status, "hop_sec": c.mel_hop / SAMPLE_RATE,
                "win_sec": c.mel_n_fft / SAMPLE_RATE, "t": "window centre, seconds", "units": "dB",
                "columns": [f"{b}[0:{c.mel_n_mels}]" for b in DELTA_BLOCKS[:1 + c.mel_deltas]]}

    def on_audio(self, samples, start_sec: float, writer) -> None:
        c = self.config
        data = log_mel(samples, SAMPLE_RATE, c.mel_n_mels, c.mel_n_fft, c.mel_hop, c.mel_window,
                       c.mel_fmin, c.mel_fmax, c.mel_log_floor)
        data = with_deltas(data, c.mel_deltas, c.mel_delta_window)
        self._write(writer, data, frame_times(len(data), c.mel_hop, SAMPLE_RATE, start_sec),
                    "ok" if samples is not None else "no audio")

    def on_no_audio(self, writer) -> None:
        c = self.config
        self._write(writer, np.zeros((0, c.mel_n_mels * (1 + c.mel_deltas)), np.float32), np.zeros(0), "no audio")

    def _write(self, writer, data, t, status):
        g = writer.group.require_group("audio/mel")
        writer.create("audio/mel/data", data=data, growable=False)
        writer.create("audio/mel/t", data=np.asarray(t, np.float64), growable=False)
        from ..store import set_attrs

        set_attrs(g, self._attrs(status))
