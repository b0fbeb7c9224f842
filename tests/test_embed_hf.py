"""Embeddings from Hugging Face transformers vision towers (clip-vit-b16, dinov2-small).

The real weights are download-only (and this machine is offline), so each backbone is proven on a
tiny random model of the same transformers class, saved the way the real checkpoint is published
(CLIP: a whole CLIPModel as pytorch_model.bin; DINOv2: model.safetensors) and loaded through our
loader: our embedding == transformers model(image processor(crop)). The pixel tensors are checked
separately against the (slow, PIL) image processors configured as the published
preprocessor_config.json files, on real face crops.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from facekit import zoo
from facekit.face import embed

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
cv2 = pytest.importorskip("cv2")

PIXEL_ATOL = 1e-5  # our pixel_values vs the processor's (float32 rounding of the same formula)
EMBED_ATOL = 1e-5  # our embedding vs the transformers reference on the same pixels
TINY_CLIP = {"hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2, "num_attention_heads": 4,
             "projection_dim": 24}  # + the real image_size 224, patch 16, quick_gelu, eps
TINY_DINO = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4}  # + real 518/14, eps


def _processor(name):
    """The slow (PIL) image processor with the published preprocessor_config.json values."""
    if name == "clip-vit-b16":  # openai/clip-vit-base-patch16: CLIPImageProcessor defaults
        cls = getattr(transformers, "CLIPImageProcessorPil", None) or transformers.CLIPImageProcessor
        return cls(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224}, resample=3,
                   image_mean=list(embed.CLIP_MEAN), image_std=list(embed.CLIP_STD))
    cls = getattr(transformers, "BitImageProcessorPil", None) or transformers.BitImageProcessor  # facebook/dinov2-small
    return cls(size={"shortest_edge": 256}, crop_size={"height": 224, "width": 224}, resample=3,
               image_mean=list(embed.IMAGENET_MEAN), image_std=list(embed.IMAGENET_STD))


def _faces():
    """Real faces: skimage's astronaut, its mirror image and a half-size copy, each with the five
    key points YuNet (embedded) finds. Returns [(rgb, kps5 [5,2])]."""
    from skimage import data

    rgb0 = np.ascontiguousarray(data.astronaut())
    out = []
    for rgb in (rgb0, np.ascontiguousarray(rgb0[:, ::-1]), cv2.resize(rgb0, (256, 256), interpolation=cv2.INTER_AREA)):
        bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
        det = cv2.FaceDetectorYN.create(str(zoo.resolve("yunet").path), "", (bgr.shape[1], bgr.shape[0]), 0.6)
        _, f = det.detect(bgr)
        assert f is not None and len(f) >= 1
        out.append((rgb, f[0, 4:14].reshape(5, 2).astype(np.float64)))
    return out


def _crops(name):
    spec = embed.BACKBONES[name]
    return np.concatenate([embed.warp_batch(rgb[None], np.array([0]), embed.crop_affines(k[None], spec), spec.size)
                           for rgb, k in _faces()])


def _tiny_clip(tmp_path, seed=0):
    """A random CLIPModel (text + vision) of the ViT-B/16 layout at tiny width, saved as the HF repo
    ships it (a pickled state dict, pytorch_model.bin); and its vision tower with projection."""
    torch.manual_seed(seed)
    vcfg = {**embed.CLIP_VIT_B16_CONFIG, **TINY_CLIP}
    proj = vcfg.pop("projection_dim")
    cfg = transformers.CLIPConfig(
        text_config={"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 1, "num_attention_heads": 2,
                     "vocab_size": 99, "max_position_embeddings": 16},
        vision_config=vcfg, projection_dim=proj)
    full = transformers.CLIPModel(cfg).eval()
    with torch.no_grad():  # random, not the init's (zero biases, unit layer norms): every tensor matters
        for p in full.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    path = tmp_path / "pytorch_model.bin"
    torch.save(full.state_dict(), path)
    ref = transformers.CLIPVisionModelWithProjection(transformers.CLIPVisionConfig(**vcfg, projection_dim=proj)).eval()
    ref.load_state_dict({k: v for k, v in full.state_dict().items() if k in ref.state_dict()})
    return path, full, ref


def _tiny_dino(tmp_path, seed=0):
    """A random Dinov2Model of the ViT-S/14 layout (518 px position grid, interpolated to 224) at
    tiny width, saved with save_pretrained (model.safetensors), and reloaded by transformers."""
    torch.manual_seed(seed)
    net = transformers.Dinov2Model(transformers.Dinov2Config(**{**embed.DINOV2_SMALL_CONFIG, **TINY_DINO})).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    net.save_pretrained(tmp_path / "dino", safe_serialization=True)
    path = tmp_path / "dino" / "model.safetensors"
    assert path.is_file()
    return path, transformers.Dinov2Model.from_pretrained(str(tmp_path / "dino")).eval()


def _ours(name, path, tiny):
    spec = embed.BACKBONES[name]
    spec = embed.Backbone(**{**spec.__dict__, "dim": tiny.get("projection_dim", tiny["hidden_size"])})
    return embed.HFEmbedder(spec, zoo.Resolved(name, path, "explicit", zoo.sha256_of(path)), max_batch=2,
                            config=tiny)


# ----------------------------------------------------------------------------- preprocessing

@pytest.mark.parametrize("name", ["clip-vit-b16", "dinov2-small"])
def test_pixels_equal_the_image_processor(name, tmp_path):
    """Our pixel_values for real aligned face crops == the transformers image processor's for the
    same crops (CLIPImageProcessor: resize 224 + centre crop 224 are the identity on our 224 crop;
    BitImageProcessor: resize 256 is the identity, its centre 224 crop is ours)."""
    crops = _crops(name)
    spec = embed.BACKBONES[name]
    assert crops.shape == (3, spec.size, spec.size, 3) and crops.dtype == np.uint8
    path, *_ = (_tiny_clip if name == "clip-vit-b16" else _tiny_dino)(tmp_path)
    m = _ours(name, path, TINY_CLIP if name == "clip-vit-b16" else TINY_DINO)
    ours = m.preprocess(crops).numpy()
    ref = _processor(name)(images=list(crops), return_tensors="np")["pixel_values"]
    assert ours.shape == ref.shape == (3, 3, 224, 224)
    np.testing.assert_allclose(ours, ref, atol=PIXEL_ATOL, rtol=0)


def test_dinov2_sees_the_clip_view():
    """The centre 224 of the dinov2-small crop is the clip-vit-b16 crop (same face, same framing), up
    to cv2.warpAffine's fixed-point sampling of a translated affine (measured: mean |diff| 0.007,
    0.07 % of values off by more than 1 grey level)."""
    c = _crops("clip-vit-b16").astype(np.int16)
    d = _crops("dinov2-small")[:, 16:240, 16:240].astype(np.int16)
    diff = np.abs(c - d)
    assert diff.mean() < 0.05 and (diff > 1).mean() < 0.005
    np.testing.assert_allclose(embed.BACKBONES["dinov2-small"].points() - 16,
                               embed.BACKBONES["clip-vit-b16"].points(), atol=1e-9)


# ----------------------------------------------------------------------------- models

def test_clip_equals_transformers(tmp_path):
    """clip-vit-b16 = CLIPVisionModelWithProjection(CLIPImageProcessor(crop)).image_embeds =
    CLIPModel.get_image_features, the weights read from a whole-CLIPModel pytorch_model.bin."""
    path, full, ref = _tiny_clip(tmp_path)
    m = _ours("clip-vit-b16", path, TINY_CLIP)
    crops = _crops("clip-vit-b16")
    ours = m(crops)                                   # batches of 2: 2 + 1
    px = torch.from_numpy(_processor("clip-vit-b16")(images=list(crops), return_tensors="np")["pixel_values"])
    with torch.no_grad():
        want = ref(pixel_values=px).image_embeds.numpy()
        feats = full.get_image_features(pixel_values=px)
    feats = getattr(feats, "pooler_output", feats).numpy()  # a tensor (transformers 4) or an output (5)
    assert ours.shape == (3, 24) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, want, atol=EMBED_ATOL, rtol=1e-4)
    np.testing.assert_allclose(ours, feats, atol=EMBED_ATOL, rtol=1e-4)
    assert np.abs(ours[0] - ours[1]).max() > 1e-3    # different faces, different vectors


def test_dinov2_equals_transformers(tmp_path):
    """dinov2-small = Dinov2Model(BitImageProcessor(crop)).pooler_output, which is the CLS token
    of last_hidden_state (after the final layernorm), weights from model.safetensors."""
    path, ref = _tiny_dino(tmp_path)
    m = _ours("dinov2-small", path, TINY_DINO)
    crops = _crops("dinov2-small")
    ours = m(crops)
    px = torch.from_numpy(_processor("dinov2-small")(images=list(crops), return_tensors="np")["pixel_values"])
    with torch.no_grad():
        out = ref(pixel_values=px)
    np.testing.assert_allclose(ours, out.pooler_output.numpy(), atol=EMBED_ATOL, rtol=1e-4)
    np.testing.assert_allclose(ours, out.last_hidden_state[:, 0].numpy(), atol=EMBED_ATOL, rtol=1e-4)
    assert ours.shape == (3, 64)


def test_stage_path_and_params(tmp_path):
    """embed_faces (crop from kps5, then the model) = the model on our crops; the stage params name
    the centre crop and template size that determine dinov2-small's output."""
    path, _ = _tiny_dino(tmp_path)
    m = _ours("dinov2-small", path, TINY_DINO)
    (rgb, kps), *_ = _faces()
    e = embed.embed_faces(m, rgb[None], np.array([0]), kps[None])
    np.testing.assert_array_equal(e, m(_crops("dinov2-small")[:1]))
    p = embed.BACKBONES["dinov2-small"].crop_params()
    assert (p["size"], p["template_size"], p["center_crop"], p["margin"]) == (256, 224, 224, 0.25)
    assert "center_crop" not in embed.BACKBONES["efficientnet-lite0"].crop_params()  # older params unchanged


def test_bad_checkpoints_fail_clearly(tmp_path):
    """A checkpoint of another architecture or width is refused with a one-line ModelError."""
    dino, _ = _tiny_dino(tmp_path)
    with pytest.raises(zoo.ModelError, match="does not fit CLIPVisionModelWithProjection"):
        _ours("clip-vit-b16", dino, TINY_CLIP)
    clip, *_ = _tiny_clip(tmp_path)
    with pytest.raises(zoo.ModelError, match="does not fit Dinov2Model"):
        _ours("dinov2-small", clip, TINY_DINO)
    with pytest.raises(zoo.ModelError, match="does not fit CLIPVisionModelWithProjection"):
        _ours("clip-vit-b16", clip, {**TINY_CLIP, "hidden_size": 32})
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"not a checkpoint at all")
    with pytest.raises(zoo.ModelError, match="not a readable"):
        _ours("dinov2-small", junk, TINY_DINO)


@pytest.mark.parametrize("name,filename,rev", [
    ("clip-vit-b16", "pytorch_model.bin", "57c216476eefef5ab752ec549e440a49ae4ae5f3"),
    ("dinov2-small", "model.safetensors", "ed25f3a31f01632728cabb09d1542f84ab7b0056")])
def test_registry_entries_and_offline_message(name, filename, rev):
    f = zoo.get(name).files[0]
    assert f.filename == filename and len(f.sha256) == 64 and f.size > 0
    assert f.url.startswith("https://huggingface.co/") and f"/resolve/{rev}/" in f.url  # pinned commit
    assert embed.parse_names(f"sface,{name}") == ["sface", name]
    with pytest.raises(zoo.ModelNotFoundError, match=f"facekit models pull {name}"):
        embed.load(name)


def test_embed_stage_with_a_tiny_dinov2(clips, tmp_path, monkeypatch):
    """The stage end to end (--embed dinov2-small --weights dinov2-small=PATH), the registry's spec
    given the tiny architecture: store layout, attrs naming the centre crop, and the same vectors
    as the embedder on our crops of the stored key points."""
    import facekit

    path, _ = _tiny_dino(tmp_path)
    spec = embed.BACKBONES["dinov2-small"]
    tiny = embed.Backbone(**{**spec.__dict__, "dim": 64,
                             "extra": {**spec.extra, "config": {**spec.extra["config"], **TINY_DINO}}})
    monkeypatch.setitem(embed.BACKBONES, "dinov2-small", tiny)
    out = tmp_path / "e.h5"
    s = facekit.extract([clips["face"]], out, stages="embed", embed="dinov2-small",
                        weights={"dinov2-small": str(path)})
    assert s.ok and len(s.processed) == 1
    with facekit.open(out) as st:
        g = st[list(st)[0]].group
        e = g["faces/embed/dinov2-small"][()]
        n = g["faces/frame"].shape[0]
        assert n > 0 and e.shape == (n, 64) and e.dtype == np.float32 and np.isfinite(e).all()
        a = dict(g["faces/embed/dinov2-small"].attrs)
        assert a["model"] == "dinov2-small" and a["weights_sha256"] == zoo.sha256_of(path)
        assert json.loads(a["crop"])["center_crop"] == 224
        assert np.asarray(json.loads(a["template_points"])).shape == (5, 2)
        kps = g["faces/kps5"][()]
        row = int(g["faces/frame"][0])
    # the first face again, from the decoded frames (the engine's reader and defaults)
    from facekit import media

    batch = next(iter(media.iter_frames(str(clips["face"]), batch_size=row + 1)))
    m = embed.HFEmbedder(tiny, zoo.Resolved("dinov2-small", path, "explicit", zoo.sha256_of(path)))
    again = embed.embed_faces(m, batch.rgb, np.array([row]), kps[:1], batch.scale)
    np.testing.assert_allclose(again, e[:1], atol=1e-4)


def test_dinov2_config_matches_the_registered_file_size():
    """DINOV2_SMALL_CONFIG's tensors (float32) fill the registered model.safetensors but for its JSON
    header: the architecture constants have the published shapes (built on the meta device)."""
    with torch.device("meta"):
        net = transformers.Dinov2Model(transformers.Dinov2Config(**embed.DINOV2_SMALL_CONFIG))
    tensors = 4 * sum(t.numel() for t in net.state_dict().values())
    header = zoo.get("dinov2-small").files[0].size - tensors
    assert 8 < header < 32_000, header
