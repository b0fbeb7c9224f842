"""facekit.face.align: templates, Umeyama similarity, affine algebra, crop warps (OpenCV and array-module)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from facekit.face import align
from facekit.face.align import (ARCFACE_112, ffhq_quad_affine, invert_affine, kps5_from_lm68, similarity_from_points,
                                template, transform_points, warp_crops, warp_crops_xp)
from facekit.face.pose import MEAN_FACE_68


def _sim(scale, angle_deg, tx, ty):
    a = np.radians(angle_deg)
    c, s = scale * np.cos(a), scale * np.sin(a)
    return np.array([[c, -s, tx], [s, c, ty]])


def test_arcface_template_is_insightface():
    assert np.array_equal(template("arcface", 112), ARCFACE_112)
    assert ARCFACE_112[0, 0] < ARCFACE_112[1, 0] and ARCFACE_112[3, 0] < ARCFACE_112[4, 0]  # image-left first
    assert align.KPS5_NAMES == ("right_eye", "left_eye", "nose", "right_mouth", "left_mouth")
    np.testing.assert_allclose(template("arcface", 224), ARCFACE_112 * 2)
    np.testing.assert_allclose(template("arcface", 128), ARCFACE_112 + [8.0, 0.0])  # insightface estimate_norm
    # margin zooms out about the crop centre: field of view grows by 1 + 2 * margin
    t = template("arcface", 112, margin=0.25)
    np.testing.assert_allclose((t - 56) * 1.5, ARCFACE_112 - 56, atol=1e-12)
    with pytest.raises(ValueError):
        template("nope")


def test_points_on_template_give_identity():
    M = similarity_from_points(ARCFACE_112[None], ARCFACE_112)
    assert M.shape == (1, 2, 3) and M.dtype == np.float64
    np.testing.assert_allclose(M[0], np.eye(2, 3), atol=1e-12)
    np.testing.assert_allclose(transform_points(M, ARCFACE_112[None])[0], ARCFACE_112, atol=1e-12)


def test_similarity_recovers_known_transform():
    rng = np.random.default_rng(1)
    Ms = np.stack([_sim(rng.uniform(0.05, 4), rng.uniform(-180, 180), *rng.uniform(-500, 500, 2)) for _ in range(32)])
    dst = template("arcface", 112)
    src = transform_points(invert_affine(Ms), np.broadcast_to(dst, (32, 5, 2)))  # image points that map onto dst
    est = similarity_from_points(src, dst)
    np.testing.assert_allclose(est, Ms, atol=1e-6, rtol=0)
    single = similarity_from_points(src[3], dst)
    assert single.shape == (2, 3)
    np.testing.assert_allclose(single, Ms[3], atol=1e-6)


def test_similarity_equals_umeyama_and_never_reflects():
    from skimage.transform import SimilarityTransform

    rng = np.random.default_rng(2)
    src = rng.uniform(0, 640, (20, 5, 2))
    src[:5] = src[:5, ::-1]                    # some sets in mirrored order: the best fit would reflect
    src[5:10, :, 0] *= -1
    est = similarity_from_points(src, ARCFACE_112)
    for i in range(len(src)):
        if hasattr(SimilarityTransform, "from_estimate"):   # skimage >= 0.26
            t = SimilarityTransform.from_estimate(src[i], ARCFACE_112)
        else:
            t = SimilarityTransform()
            t.estimate(src[i], ARCFACE_112)                    # what insightface does
        np.testing.assert_allclose(est[i], t.params[:2], atol=1e-9)
        assert np.linalg.det(est[i, :, :2]) > 0
        assert np.isclose(est[i, 0, 0], est[i, 1, 1]) and np.isclose(est[i, 0, 1], -est[i, 1, 0])


def test_similarity_degenerate_is_nan():
    src = np.stack([np.full((5, 2), 7.0), np.full((5, 2), np.nan), ARCFACE_112 * 2])
    M = similarity_from_points(src, ARCFACE_112)
    assert np.isnan(M[0]).all() and np.isnan(M[1]).all() and np.isfinite(M[2]).all()


def test_invert_affine_matches_cv2_and_round_trips():
    rng = np.random.default_rng(3)
    M = rng.normal(size=(10, 2, 3)) * [1, 1, 100]
    inv = invert_affine(M)
    for k in range(len(M)):
        np.testing.assert_allclose(inv[k], cv2.invertAffineTransform(M[k]), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(invert_affine(inv), M, atol=1e-9)
    assert np.isnan(invert_affine(np.zeros((2, 3)))).all()


def test_affine_round_trip_crop_image_crop():
    rng = np.random.default_rng(4)
    kps = transform_points(_sim(3.1, 27, 400, 210), ARCFACE_112) + rng.normal(0, 1.5, (5, 2))
    img2crop = similarity_from_points(kps[None], template("arcface", 112))
    crop2img = invert_affine(img2crop)             # what the store keeps as faces/affine
    pts = rng.uniform(0, 112, (1, 50, 2))
    back = transform_points(img2crop, transform_points(crop2img, pts))
    np.testing.assert_allclose(back, pts, atol=1e-9)
    # the crop's template points map to (approximately) the image key points
    np.testing.assert_allclose(transform_points(crop2img[0], ARCFACE_112), kps, atol=5)


def test_transform_points_shapes():
    M = np.stack([_sim(2, 0, 1, 2), _sim(1, 90, 0, 0)])
    pts = np.array([[[1.0, 0.0]], [[1.0, 0.0]]])
    np.testing.assert_allclose(transform_points(M, pts), [[[3, 2]], [[0, 1]]], atol=1e-12)
    assert transform_points(M[0], np.zeros((7, 2))).shape == (7, 2)
    assert transform_points(M, np.zeros((2, 0, 2))).shape == (2, 0, 2)


def _dot_image(points, h=480, w=640, radius=7):
    """Black RGB image with a white anti-aliased disc at each point (sub-pixel centres)."""
    img = np.zeros((h, w, 3), np.uint8)
    shift = 4
    for x, y in points:
        cv2.circle(img, (int(round(x * 16)), int(round(y * 16))), radius * 16, (255, 255, 255), -1, cv2.LINE_AA, shift)
    return img


def _blob_centroids(crop):
    g = crop[..., 0].astype(np.float64)
    n, labels = cv2.connectedComponents((g > 0).astype(np.uint8))
    ys, xs = np.mgrid[:g.shape[0], :g.shape[1]]
    out = []
    for i in range(1, n):
        w = np.where(labels == i, g, 0)
        out.append([(w * xs).sum() / w.sum(), (w * ys).sum() / w.sum()])
    return np.array(out)


@pytest.mark.parametrize("size,margin", [(112, 0.0), (112, 0.3), (224, 0.0), (128, 0.0), (160, 0.1)])
def test_warped_dots_land_on_template(size, margin):
    dst = template("arcface", size, margin)
    for scale, angle, tx, ty in [(0.45, 0, 200, 100), (0.3, -35, 340, 160), (0.6, 160, 380, 300)]:
        img2crop = _sim(scale * size / 112, angle, 0, 0)
        img2crop[:, 2] = dst.mean(0) - img2crop[:, :2] @ [tx, ty]   # face centred at (tx, ty)
        kps = transform_points(invert_affine(img2crop), dst)       # where the key points are in the image
        assert (kps > 10).all() and (kps[:, 0] < 630).all() and (kps[:, 1] < 470).all()
        img = _dot_image(kps)
        M = similarity_from_points(kps[None], dst)
        crop = warp_crops(img, M, size)
        assert crop.shape == (1, size, size, 3) and crop.dtype == np.uint8
        found = _blob_centroids(crop[0])
        assert len(found) == 5
        d = np.linalg.norm(found[:, None] - dst[None], axis=-1)
        assert d.min(axis=0).max() < 1.0, d.min(axis=0)


def _ffhq_quad_reference(lm):
    """The quad exactly as NVlabs/ffhq-dataset computes it (float64, one face)."""
    eye_left, eye_right = lm[36:42].mean(0), lm[42:48].mean(0)
    eye_avg = (eye_left + eye_right) * 0.5
    eye_to_eye = eye_right - eye_left
    mouth_avg = (lm[48] + lm[54]) * 0.5
    eye_to_mouth = mouth_avg - eye_avg
    x = eye_to_eye - np.flipud(eye_to_mouth) * [-1, 1]
    x /= np.hypot(*x)
    x *= max(np.hypot(*eye_to_eye) * 2.0, np.hypot(*eye_to_mouth) * 1.8)
    y = np.flipud(x) * [-1, 1]
    c = eye_avg + eye_to_mouth * 0.1
    return np.stack([c - x - y, c - x + y, c + x + y, c + x - y])


def test_ffhq_quad_affine_matches_recipe():
    rng = np.random.default_rng(5)
    S = 256
    lms = []
    for k in range(6):
        A = _sim(rng.uniform(1, 4), rng.uniform(-40, 40), *rng.uniform(150, 450, 2))
        lms.append(transform_points(A, MEAN_FACE_68[:, :2]) + rng.normal(0, 2, (68, 2)))
    lms = np.stack(lms)
    M = ffhq_quad_affine(lms, S)
    assert M.shape == (6, 2, 3)
    # PIL's QUAD maps the outer corners of the output (pixel-centre coords -0.5 and S-0.5) onto the quad
    corners = np.array([[-0.5, -0.5], [-0.5, S - 0.5], [S - 0.5, S - 0.5], [S - 0.5, -0.5]])
    for k in range(len(lms)):
        np.testing.assert_allclose(transform_points(invert_affine(M[k]), corners), _ffhq_quad_reference(lms[k]),
                                   atol=1e-9)
    # margin grows the quad about its centre
    Mm = ffhq_quad_affine(lms[:1], S, margin=0.25)
    q0, q1 = _ffhq_quad_reference(lms[0]), transform_points(invert_affine(Mm[0]), corners)
    np.testing.assert_allclose(q1 - q1.mean(0), (q0 - q0.mean(0)) * 1.5, atol=1e-9)


def test_ffhq_template_is_where_the_mean_face_lands():
    S = 512
    A = _sim(2.5, 15, 300, 250)
    lm = transform_points(A, MEAN_FACE_68[:, :2])[None]
    got = transform_points(ffhq_quad_affine(lm, S), kps5_from_lm68(lm))[0]
    np.testing.assert_allclose(got, template("ffhq", S), atol=1e-9)
    t = template("ffhq", S)
    assert t[0, 0] < S / 2 < t[1, 0] and t[0, 1] < t[2, 1] < t[3, 1]   # eyes left/right, eyes above nose above mouth
    assert 0.2 < (t[1, 0] - t[0, 0]) / S < 0.3                         # FFHQ: inter-ocular ~ a quarter of the side


def _random_affines(rng, K, H, W, S):
    Ms = []
    for k in range(K):
        scale = rng.uniform(0.3, 3.0)
        M = _sim(scale, rng.uniform(-180, 180), 0, 0)
        cx, cy = rng.uniform(-0.2, 1.2) * W, rng.uniform(-0.2, 1.2) * H   # some crops run off the image
        M[:, 2] = S / 2 - M[:, :2] @ [cx, cy]
        Ms.append(M)
    Ms.append(_sim(1.0, 0, -5000, -5000))                               # entirely outside
    Ms.append(_sim(1.0, 0, 0.0, 0.0))                                   # plain copy of the top-left corner
    Ms.append(np.array([[0.7, 0.2, -10.3], [-0.1, 1.3, 4.7]]))           # general affine
    return np.stack(Ms)


@pytest.mark.parametrize("border", ["constant", "replicate"])
def test_warp_crops_xp_matches_cv2(border):
    rng = np.random.default_rng(6)
    B, H, W, S = 3, 90, 130, 48
    imgs = rng.integers(0, 256, (B, H, W, 3), dtype=np.uint8)
    imgs[:, 20:50, 30:70] = 255                                          # sharp edges: worst case for rounding
    imgs[1] = cv2.GaussianBlur(imgs[1], (0, 0), 1.5)
    Ms = _random_affines(rng, 24, H, W, S)
    fidx = rng.integers(0, B, len(Ms))
    got = warp_crops_xp(imgs, fidx, Ms, S, xp=np, border=border)
    assert got.shape == (len(Ms), S, S, 3) and got.dtype == np.uint8
    ref = np.stack([warp_crops(imgs[f], M[None], S, border=border)[0] for f, M in zip(fidx, Ms)])
    diff = np.abs(got.astype(int) - ref.astype(int))
    assert diff.max() <= 1, diff.max()
    assert (diff == 0).mean() > 0.999                                    # in practice bit-exact
    if border == "constant":
        assert (got[-3] == 0).all()
    np.testing.assert_array_equal(got[-2], imgs[fidx[-2], :S, :S])


def test_warp_crops_xp_shapes_and_single_image():
    img = np.random.default_rng(7).integers(0, 256, (40, 50, 3), dtype=np.uint8)
    M = _sim(1.5, 10, 3, -4)[None]
    np.testing.assert_array_equal(warp_crops_xp(img, [0], M, 32), warp_crops(img, M, 32))
    assert warp_crops_xp(img[None], np.zeros(0, int), np.zeros((0, 2, 3)), 32).shape == (0, 32, 32, 3)
    assert warp_crops(img, np.zeros((0, 2, 3)), 32).shape == (0, 32, 32, 3)
    nan = np.full((1, 2, 3), np.nan)
    assert (warp_crops(img, nan, 16) == 0).all() and (warp_crops_xp(img, [0], nan, 16) == 0).all()
    with pytest.raises(TypeError):
        warp_crops_xp(img.astype(np.float32), [0], M, 32)
    with pytest.raises(ValueError):
        warp_crops(img, M, 32, border="reflect")
