"""The batched crop warp as one CUDA kernel (CuPy): K crops from B frames in one launch.

``warp_crops_cuda`` computes exactly what ``align.warp_crops_xp`` computes (OpenCV's bilinear
``INTER_LINEAR`` fixed-point arithmetic: the crop -> image affine in float64, positions rounded
to 1/1024 px per row/column part and then to 1/32 px, 5-bit fractions, weights summing to 2**10,
round to nearest), one thread per output pixel, all channels in that thread. The float64 steps
use ``__dmul_rn``/``__dadd_rn`` so the compiler cannot fuse them into FMAs (which would round
differently from NumPy); on the same inputs it is therefore bit-identical to the NumPy path, and
like that path equal to ``cv2.warpAffine`` within 1 grey level (in practice bit-exact).
``tests/test_warp_gpu.py`` checks it where a GPU is present; ``bench/gpu.py`` measures it.
"""

from __future__ import annotations

import numpy as np

from . import align

THREADS_PER_BLOCK = 256

_SOURCE = r"""
extern "C" __global__ void warp_crops_bilinear(
        const unsigned char* __restrict__ images, const int H, const int W, const int C,
        const long long* __restrict__ fidx, const double* __restrict__ Mi,
        const unsigned char* __restrict__ bad, const int K, const int S,
        const int constant_border, const int border_value, unsigned char* __restrict__ out)
{
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;   // over K * S * S
    const long long n = (long long)K * S * S;
    if (i >= n) return;
    const int x = (int)(i % S);
    const int y = (int)((i / S) % S);
    const int k = (int)(i / ((long long)S * S));
    unsigned char* o = out + i * C;
    if (bad[k]) {
        for (int c = 0; c < C; ++c) o[c] = (unsigned char)border_value;
        return;
    }
    const double* m = Mi + 6 * (long long)k;   // crop -> image: [[m0 m1 m2], [m3 m4 m5]]
    const double xd = (double)x, yd = (double)y;
    // OpenCV warpAffine: x part and y part rounded separately to 1/1024 px (AB_BITS = 10)
    const long long adelta = llrint(__dmul_rn(__dmul_rn(m[0], xd), 1024.0));
    const long long bdelta = llrint(__dmul_rn(__dmul_rn(m[3], xd), 1024.0));
    const long long X0 = llrint(__dmul_rn(__dadd_rn(__dmul_rn(m[1], yd), m[2]), 1024.0)) + 16;
    const long long Y0 = llrint(__dmul_rn(__dadd_rn(__dmul_rn(m[4], yd), m[5]), 1024.0)) + 16;
    const long long X = (X0 + adelta) >> 5;    // 1/32 px (INTER_BITS = 5)
    const long long Y = (Y0 + bdelta) >> 5;
    const long long sx = X >> 5, sy = Y >> 5;
    const int fx = (int)(X & 31), fy = (int)(Y & 31);
    const long long base = fidx[k] * (long long)H * W;
    int acc[4] = {0, 0, 0, 0};                 // C <= 4
    for (int dy = 0; dy < 2; ++dy) {
        const long long yy = sy + dy;
        const int wy = dy ? fy : 32 - fy;
        const long long cy = yy < 0 ? 0 : (yy >= H ? H - 1 : yy);
        for (int dx = 0; dx < 2; ++dx) {
            const long long xx = sx + dx;
            const int w = wy * (dx ? fx : 32 - fx);
            const long long cx = xx < 0 ? 0 : (xx >= W ? W - 1 : xx);
            const bool inside = xx >= 0 && xx < W && yy >= 0 && yy < H;
            const unsigned char* p = images + (base + cy * W + cx) * C;
            for (int c = 0; c < C; ++c) {
                const int v = (constant_border && !inside) ? border_value : (int)p[c];
                acc[c] += v * w;
            }
        }
    }
    for (int c = 0; c < C; ++c) {
        int v = (acc[c] + 512) >> 10;
        o[c] = (unsigned char)(v < 0 ? 0 : (v > 255 ? 255 : v));
    }
}
"""

_KERNEL = None


def _kernel(cp):
    global _KERNEL
    if _KERNEL is None:
        _KERNEL = cp.RawKernel(_SOURCE, "warp_crops_bilinear")  # compiled per GPU on first launch
    return _KERNEL


def warp_crops_cuda(images, frame_idx, M, size: int, border: str = "constant", border_value: int = 0):
    """Crops of a batch of frames on the current CUDA device, in one kernel launch.

    ``images``: ``[B, H, W, C]`` uint8 (``C`` <= 4; a NumPy array is uploaded, a CuPy array is
    used in place; one ``[H, W, C]`` image is accepted); ``frame_idx``: ``[K]`` int, the frame of
    each crop; ``M``: ``[K, 2, 3]`` image -> crop affines (NumPy or CuPy); ``size``: S pixels.
    ``border``: ``"constant"`` (``border_value`` outside the image) or ``"replicate"``.
    Returns ``[K, S, S, C]`` uint8 CuPy array (``.get()`` for NumPy). Non-finite affines give
    crops of ``border_value``, as ``warp_crops``.
    """
    import cupy as cp

    align._border_flag(border)
    images = cp.asarray(images)
    if images.dtype != cp.uint8:
        raise TypeError(f"warp_crops_cuda needs uint8 images, got {images.dtype}")
    if images.ndim == 3:
        images = images[None]
    if images.ndim != 4 or not 1 <= images.shape[3] <= 4:
        raise ValueError(f"need images [B,H,W,C] with C <= 4, got {images.shape}")
    images = cp.ascontiguousarray(images)
    B, H, W, C = images.shape
    S = int(size)
    # the crop -> image affines in float64 on the host, by the same code as the NumPy path
    M = M.get() if hasattr(M, "get") else M
    Mi = align.invert_affine(np.asarray(M, dtype=np.float64).reshape(-1, 2, 3), xp=np)
    K = Mi.shape[0]
    fidx = np.asarray(frame_idx.get() if hasattr(frame_idx, "get") else frame_idx, dtype=np.int64).reshape(-1)
    if fidx.shape[0] != K:
        raise ValueError(f"frame_idx has {fidx.shape[0]} entries for {K} affines")
    if K and (fidx.min() < 0 or fidx.max() >= B):
        raise ValueError(f"frame_idx out of range for {B} frames")
    out = cp.empty((K, S, S, C), dtype=cp.uint8)
    if K == 0:
        return out
    bad = ~np.isfinite(Mi).all(axis=(1, 2))
    Mi = np.where(bad[:, None, None], 0.0, Mi)
    n = K * S * S
    blocks = (n + THREADS_PER_BLOCK - 1) // THREADS_PER_BLOCK
    _kernel(cp)((blocks,), (THREADS_PER_BLOCK,), (
        images, np.int32(H), np.int32(W), np.int32(C), cp.asarray(fidx), cp.asarray(Mi.reshape(K, 6)),
        cp.asarray(bad.astype(np.uint8)), np.int32(K), np.int32(S),
        np.int32(border == "constant"), np.int32(border_value), out))
    return out
