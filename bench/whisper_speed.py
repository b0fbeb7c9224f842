"""Speed of the whisper stage's encoder (seconds of audio per second) and, on CUDA, float16 vs float32.

    python bench/whisper_speed.py --model whisper-base [--weights PATH] [--device cuda]
           [--seconds 90] [--batch 4] [--audio ../shared/data/speech/jfk.flac]

Encodes ``--seconds`` of real speech (the audio file tiled) with facekit's own stage and prints
wall seconds, CPU seconds, audio seconds per wall second and, with ``--device cuda``, the largest
and mean absolute difference to the CPU float32 features and the lowest per-frame cosine.
Without ``--weights`` the model resolves through the zoo (cache or download).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from facekit.audio.whisper import WhisperStage  # noqa: E402
from facekit.config import Config  # noqa: E402
from facekit.media import SAMPLE_RATE, read_audio  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="whisper-base")
    ap.add_argument("--weights", default=None, help="a local checkpoint for --model")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seconds", type=float, default=90.0)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--layer", default="last")
    ap.add_argument("--audio", default=str(Path(__file__).resolve().parents[2] / "shared/data/speech/jfk.flac"))
    a = ap.parse_args()
    speech, _ = read_audio(a.audio)
    n = int(a.seconds * SAMPLE_RATE)
    x = np.tile(speech, -(-n // len(speech)))[:n]
    weights = {a.model: a.weights} if a.weights else {}

    def stage(device):
        return WhisperStage(Config(whisper_model=a.model, weights=weights, device=device,
                                   whisper_batch_size=a.batch, whisper_layer=a.layer))

    st = stage(a.device)
    st.encode(x[:SAMPLE_RATE])  # warm-up (allocations, kernels)
    t0, c0 = time.perf_counter(), time.process_time()
    y = st.encode(x)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    print(f"{st.model_name} on {a.device} ({st.params['dtype']}), batch {a.batch}: {a.seconds:.0f} s of audio "
          f"-> {y.shape} in {wall:.2f} s wall, {cpu:.2f} s CPU: {a.seconds / wall:.1f} s of audio per s")
    if a.device != "cpu":
        ref = stage("cpu").encode(x)
        d = np.abs(ref - y)
        cos = (ref * y).sum(1) / (np.linalg.norm(ref, axis=1) * np.linalg.norm(y, axis=1))
        print(f"vs CPU float32: max |diff| {d.max():.4g}, mean |diff| {d.mean():.4g} "
              f"(mean |feature| {np.abs(ref).mean():.4g}), min cosine {cos.min():.6f}")


if __name__ == "__main__":
    main()
