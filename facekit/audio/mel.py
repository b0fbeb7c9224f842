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


def log_mel(samples: np.ndarray, sr: int = SAMPLE_RATE, n_mels: int = 80, n_fft: int = 400, hop: int = 160,
            window: str = "hann", fmin: float = 0.0, fmax: float | None = 8000.0,
            log_floor: float = 1e-10) -> np.ndarray:
    """Log-Mel features [T, n_mels] float32 (dB) of mono float32 ``samples`` at ``sr`` Hz."""
    import librosa

    samples = np.asarray(samples, dtype=np.float32)
    if samples.size == 0:
        return np.zeros((0, n_mels), np.float32)
    mel = librosa.feature.melspectrogram(
        y=samples, sr=sr, n_fft=n_fft, hop_length=hop, win_length=n_fft, window=window, center=True,
        pad_mode="constant", power=2.0, n_mels=n_mels, fmin=fmin, fmax=fmax, htk=False, norm="slaney")
    return (10.0 * np.log10(np.maximum(mel, log_floor))).T.astype(np.float32)


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

    @property
    def params(self) -> dict:
        c = self.config
        return {"sample_rate": SAMPLE_RATE, "n_mels": c.mel_n_mels, "n_fft": c.mel_n_fft, "hop": c.mel_hop,
                "win_length": c.mel_n_fft, "window": c.mel_window, "fmin": c.mel_fmin, "fmax": c.mel_fmax,
                "log_floor": c.mel_log_floor, "power": 2.0, "mel_scale": "slaney", "norm": "slaney",
                "center": True, "log": "10*log10(max(mel, log_floor)) dB"}

    def _attrs(self, status: str) -> dict:
        c = self.config
        return {**self.params, "audio_status": status, "hop_sec": c.mel_hop / SAMPLE_RATE,
                "win_sec": c.mel_n_fft / SAMPLE_RATE, "t": "window centre, seconds", "units": "dB"}

    def on_audio(self, samples, start_sec: float, writer) -> None:
        c = self.config
        data = log_mel(samples, SAMPLE_RATE, c.mel_n_mels, c.mel_n_fft, c.mel_hop, c.mel_window,
                       c.mel_fmin, c.mel_fmax, c.mel_log_floor)
        self._write(writer, data, frame_times(len(data), c.mel_hop, SAMPLE_RATE, start_sec),
                    "ok" if samples is not None else "no audio")

    def on_no_audio(self, writer) -> None:
        self._write(writer, np.zeros((0, self.config.mel_n_mels), np.float32), np.zeros(0), "no audio")

    def _write(self, writer, data, t, status):
        g = writer.group.require_group("audio/mel")
        writer.create("audio/mel/data", data=data, growable=False)
        writer.create("audio/mel/t", data=np.asarray(t, np.float64), growable=False)
        from ..store import set_attrs

        set_attrs(g, self._attrs(status))
