"""dlib's ensemble-of-regression-trees shape predictor, evaluated by our own (numba) code.

``ErtModel.load(path)`` parses a file written by ``dlib::serialize(shape_predictor)`` (e.g.
``shape_predictor_68_face_landmarks.dat``) into flat arrays; ``ErtModel.predict`` evaluates the
cascade for every face of a batch exactly as ``dlib::shape_predictor::operator()`` does (same
float32 / float64 arithmetic, same pixel rounding, same grey conversion), in one compiled loop that
releases the GIL. ``round_like_dlib`` turns the result into the integer points dlib returns.

dlib's algorithm (dlib/image_processing/shape_predictor.h), per face with rectangle ``rect``:

* ``shape`` (float32 [2K], normalised: the rectangle's corners are (0,0) and (1,1)) starts as the
  model's initial shape;
* for each cascade level: ``tform`` = the least-squares similarity transform from the initial shape
  to ``shape`` (Umeyama, in double, cast to float32); each of the level's feature pixels is
  ``point(tform_to_img(tform * delta + shape[anchor]))`` where ``tform_to_img`` maps (0,0) to the
  rectangle's top-left and (1,1) to its bottom-right corner (double; fitted by dlib through a
  pseudo-inverse, so exact to ~1e-16 only, which decides .5 ties) and ``point(...)`` rounds with
  ``floor(v + 0.5)``; its value is the grey intensity there (``(r + g + b) // 3`` for RGB) or 0
  outside the image; then every tree walks ``f[idx1] - f[idx2] > thresh ? left : right`` and its
  leaf vector is added to ``shape`` (float32, tree after tree);
* the result is ``tform_to_img(shape)``, rounded to integer pixels.

Both transforms go through dlib's own SVD (svd4, LAPACK-free as in the dlib wheels), which we port
operation for operation (``_svd4``; the wheel's code has no fused multiply-adds), so
even coordinates that land exactly on .5 round as dlib's. Tests: tests/test_ert.py (all points equal
dlib's on every face tried).

File format (dlib/serialize.h): integers are written as one control byte (low nibble: number of
little-endian magnitude bytes that follow, bit 0x80: negative) then the bytes; a float is two such
integers, mantissa and exponent (value = mantissa * 2**exponent; exponents 32000/32001/32002 mean
+inf/-inf/nan); a ``std::vector`` is its size then its items; a ``matrix<float,0,1>`` is -rows,
-columns (or +rows, +columns in dlib's older format) then its items; a ``vector<float,2>`` is x, y.
A shape_predictor is: version (1), initial_shape, forests (levels of trees; a tree is its splits
(idx1, idx2, thresh) then its leaf vectors), anchor_idx (per level), deltas (per level).
"""

from __future__ import annotations

import math
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import numba
import numpy as np
from llvmlite import ir
from numba.core import cgutils
from numba.extending import intrinsic
from numba.typed import List

from .. import zoo

FORMAT_VERSION = 1  # dlib's shape_predictor serialization version
EXP_INF, EXP_NINF, EXP_NAN = 32000, 32001, 32002  # dlib float_details special exponents
MAX_INT_BYTES = 8  # an int64 / unsigned long takes at most 8 magnitude bytes
MAX_EXP_BYTES = 2  # the float exponent is an int16
GREY_DIVISOR = 3  # dlib's rgb_pixel -> unsigned char: (r + g + b) / 3, integer division
DBL_EPS = float(np.finfo(np.float64).eps)  # std::numeric_limits<double>::epsilon()
DBL_MIN = float(np.finfo(np.float64).tiny)  # std::numeric_limits<double>::min()
POINT_ROUND = 0.5  # dlib converts vector<double,2> to point with floor(v + 0.5)
CACHE_VERSION = 1  # of the parsed-array cache files (cache_file)
PREFETCH_TREES = 4  # leaves are fetched this many trees before they are added
FLOATS_PER_LINE = 16  # float32 per 64-byte cache line (one prefetch each)
FACE_BLOCK = 64  # faces evaluated together, tree after tree (a tree's leaves are read once per block)

_ARRAYS = {"initial_shape": np.float32, "idx1": np.int32, "idx2": np.int32, "thresh": np.float32,
           "leaves": np.float32, "anchor": np.int32, "deltas": np.float32}  # ErtModel's arrays and dtypes
_POW2_BIAS = 256  # table of 2**e for the exponents floats use (|e| < 256), read by the parser
_POW2 = np.ldexp(1.0, np.arange(-_POW2_BIAS, _POW2_BIAS))

# parser error codes -> messages
_ERRORS = {
    1: "truncated (ends inside a value)",
    2: "malformed integer",
    3: "unsupported serialization version (expected 1)",
    4: "initial shape is not a column of x,y pairs",
    5: "trees of different sizes (only uniform cascades are supported)",
    6: "a tree's leaf count is not its split count + 1, or not a power of two",
    7: "a leaf vector's size differs from the initial shape's",
    8: "per-level pixel tables (anchor_idx, deltas) do not match the forests",
    9: "an index is out of range (split feature or anchor point)",
    10: "unexpected bytes after the model",
    11: "negative size",
}


# --------------------------------------------------------------------------------------------
# parser
# --------------------------------------------------------------------------------------------
@numba.njit(cache=True, nogil=True)
def _rd_int(buf, pos, max_bytes):
    """dlib unpack_int at ``pos`` -> (value int64, next position; -1 truncated, -2 malformed)."""
    n = buf.shape[0]
    if pos >= n:
        return np.int64(0), np.int64(-1)
    c = np.int64(buf[pos])
    size = c & 0x0F
    if size == 0 or size > max_bytes or (c & 0x70) != 0:
        return np.int64(0), np.int64(-2)
    if pos + 1 + size > n:
        return np.int64(0), np.int64(-1)
    v = np.int64(0)
    for i in range(size):
        v |= np.int64(buf[pos + 1 + i]) << np.int64(8 * i)
    if c & 0x80:
        v = -v
    return v, pos + 1 + size


@numba.njit(cache=True, nogil=True)
def _rd_float(buf, pos):
    """dlib float (float_details mantissa, exponent) -> (float32 value, next position or <0)."""
    man, pos = _rd_int(buf, pos, MAX_INT_BYTES)
    if pos < 0:
        return np.float32(0), pos
    ex, pos = _rd_int(buf, pos, MAX_EXP_BYTES)
    if pos < 0:
        return np.float32(0), pos
    if ex < EXP_INF:
        # C++: ldexpf((float)mantissa, exponent); scaling by a power of two is exact in double
        if -_POW2_BIAS <= ex < _POW2_BIAS:
            return np.float32(np.float64(np.float32(man)) * _POW2[ex + _POW2_BIAS]), pos
        return np.float32(math.ldexp(np.float64(np.float32(man)), ex)), pos
    if ex == EXP_INF:
        return np.float32(np.inf), pos
    if ex == EXP_NINF:
        return np.float32(-np.inf), pos
    return np.float32(np.nan), pos


@numba.njit(cache=True, nogil=True)
def _parse_head(buf):
    """Version, initial shape and the sizes of the first tree.

    Returns (error code (0 = fine), position, initial [D] f32, n_levels, n_trees, n_splits, n_leaves);
    the position is that of the first level's tree count.
    """
    init = np.empty(0, np.float32)
    ver, p = _rd_int(buf, 0, MAX_INT_BYTES)
    if p < 0:
        return -p, 0, init, 0, 0, 0, 0
    if ver != FORMAT_VERSION:
        return 3, 0, init, 0, 0, 0, 0
    pos = p
    nr, p = _rd_int(buf, pos, MAX_INT_BYTES)  # matrix<float,0,1>: rows, columns (negated)
    if p < 0:
        return -p, pos, init, 0, 0, 0, 0
    nc, p = _rd_int(buf, p, MAX_INT_BYTES)
    if p < 0:
        return -p, pos, init, 0, 0, 0, 0
    nr, nc = abs(nr), abs(nc)
    if nc != 1 or nr == 0 or nr % 2 != 0 or nr > buf.shape[0]:
        return 4, pos, init, 0, 0, 0, 0
    pos = p
    init = np.empty(nr, np.float32)
    for k in range(nr):
        v, p = _rd_float(buf, pos)
        if p < 0:
            return -p, pos, init, 0, 0, 0, 0
        init[k] = v
        pos = p
    n_lev, p = _rd_int(buf, pos, MAX_INT_BYTES)
    if p < 0:
        return -p, pos, init, 0, 0, 0, 0
    if n_lev < 0 or n_lev > buf.shape[0]:
        return 11, pos, init, 0, 0, 0, 0
    pos = p
    if n_lev == 0:
        return 0, pos, init, 0, 0, 0, 1
    n_tree, p = _rd_int(buf, pos, MAX_INT_BYTES)
    if p < 0:
        return -p, pos, init, 0, 0, 0, 0
    if n_tree < 0 or n_tree > buf.shape[0]:
        return 11, pos, init, 0, 0, 0, 0
    if n_tree == 0:
        return 0, pos, init, n_lev, 0, 0, 1
    n_split, p = _rd_int(buf, p, MAX_INT_BYTES)
    if p < 0:
        return -p, pos, init, 0, 0, 0, 0
    if n_split < 0 or n_split > buf.shape[0]:
        return 11, pos, init, 0, 0, 0, 0
    for s in range(n_split):  # skip the splits: idx1, idx2, thresh
        _, p = _rd_int(buf, p, MAX_INT_BYTES)
        if p < 0:
            return -p, pos, init, 0, 0, 0, 0
        _, p = _rd_int(buf, p, MAX_INT_BYTES)
        if p < 0:
            return -p, pos, init, 0, 0, 0, 0
        _, p = _rd_float(buf, p)
        if p < 0:
            return -p, pos, init, 0, 0, 0, 0
    n_leaf, p = _rd_int(buf, p, MAX_INT_BYTES)
    if p < 0:
        return -p, pos, init, 0, 0, 0, 0
    if n_leaf != n_split + 1 or (n_leaf & (n_leaf - 1)) != 0:
        return 6, pos, init, 0, 0, 0, 0
    return 0, pos, init, n_lev, n_tree, n_split, n_leaf


@numba.njit(cache=True, nogil=True)
def _parse_forests(buf, pos, idx1, idx2, thr, leaves):
    """Fill idx1/idx2/thr [C,T,S] and leaves [C,T,L,D] from ``pos`` (a level's tree count).

    Returns (error code, position after the forests, or of the error).
    """
    n_lev, n_tree, n_split = idx1.shape
    n_leaf, d = leaves.shape[2], leaves.shape[3]
    for c in range(n_lev):
        t_here, p = _rd_int(buf, pos, MAX_INT_BYTES)
        if p < 0:
            return -p, pos
        if t_here != n_tree:
            return 5, pos
        pos = p
        for t in range(n_tree):
            s_here, p = _rd_int(buf, pos, MAX_INT_BYTES)
            if p < 0:
                return -p, pos
            if s_here != n_split:
                return 5, pos
            pos = p
            for s in range(n_split):
                a, p = _rd_int(buf, pos, MAX_INT_BYTES)
                if p < 0:
                    return -p, pos
                b, p = _rd_int(buf, p, MAX_INT_BYTES)
                if p < 0:
                    return -p, pos
                v, p = _rd_float(buf, p)
                if p < 0:
                    return -p, pos
                if a < 0 or b < 0 or a > 2147483647 or b > 2147483647:
                    return 9, pos
                idx1[c, t, s] = a
                idx2[c, t, s] = b
                thr[c, t, s] = v
                pos = p
            l_here, p = _rd_int(buf, pos, MAX_INT_BYTES)
            if p < 0:
                return -p, pos
            if l_here != n_leaf:
                return 5, pos
            pos = p
            for lf in range(n_leaf):
                nr, p = _rd_int(buf, pos, MAX_INT_BYTES)
                if p < 0:
                    return -p, pos
                nc, p = _rd_int(buf, p, MAX_INT_BYTES)
                if p < 0:
                    return -p, pos
                if abs(nr) * abs(nc) != d:
                    return 7, pos
                pos = p
                out = leaves[c, t, lf]
                for k in range(d):
                    v, p = _rd_float(buf, pos)
                    if p < 0:
                        return -p, pos
                    out[k] = v
                    pos = p
    return 0, pos


@numba.njit(cache=True, nogil=True)
def _parse_pixel_count(buf, pos, n_lev):
    """(error code, number of feature pixels of the first level) at ``pos`` (anchor_idx's start)."""
    n2, p = _rd_int(buf, pos, MAX_INT_BYTES)
    if p < 0:
        return -p, 0
    if n2 != n_lev:
        return 8, 0
    if n_lev == 0:
        return 0, 0
    n_pix, p = _rd_int(buf, p, MAX_INT_BYTES)
    if p < 0:
        return -p, 0
    if n_pix < 0 or n_pix > buf.shape[0]:
        return 11, 0
    return 0, n_pix


@numba.njit(cache=True, nogil=True)
def _parse_pixels(buf, pos, n_points, anchor, deltas):
    """Fill anchor [C,P] (from anchor_idx) and deltas [C,P,2]; (error code, position) at the end."""
    n_lev, n_pix = anchor.shape
    for part in range(2):
        n2, p = _rd_int(buf, pos, MAX_INT_BYTES)
        if p < 0:
            return -p, pos
        if n2 != n_lev:
            return 8, pos
        pos = p
        for c in range(n_lev):
            p_here, p = _rd_int(buf, pos, MAX_INT_BYTES)
            if p < 0:
                return -p, pos
            if p_here != n_pix:
                return 8, pos
            pos = p
            for i in range(n_pix):
                if part == 0:
                    a, p = _rd_int(buf, pos, MAX_INT_BYTES)
                    if p < 0:
                        return -p, pos
                    if a < 0 or a >= n_points:
                        return 9, pos
                    anchor[c, i] = a
                    pos = p
                else:
                    for j in range(2):
                        v, p = _rd_float(buf, pos)
                        if p < 0:
                            return -p, pos
                        deltas[c, i, j] = v
                        pos = p
    return 0, pos


def _parse(buf: np.ndarray, name: str) -> tuple:
    """Parse a serialized shape_predictor (uint8 [N]) -> (initial [D] f32, idx1 [C,T,S] i32,
    idx2 [C,T,S] i32, thresh [C,T,S] f32, leaves [C,T,L,D] f32, anchor [C,P] i32, deltas [C,P,2] f32);
    zoo.ModelError naming ``name`` when the bytes are not a valid one."""

    def fail(err, pos):
        raise zoo.ModelError(f"{name} is not a dlib shape predictor: {_ERRORS.get(int(err), 'error')} "
                             f"(at byte {int(pos)} of {buf.shape[0]})")

    err, pos, init, n_lev, n_tree, n_split, n_leaf = _parse_head(buf)
    if err:
        fail(err, pos)
    d = init.shape[0]
    # sanity bound before allocating: every leaf value takes at least 4 bytes in the file
    if n_lev * n_tree * n_leaf * d * 4 > buf.shape[0]:
        fail(1, pos)
    idx1 = np.empty((n_lev, n_tree, n_split), np.int32)
    idx2 = np.empty((n_lev, n_tree, n_split), np.int32)
    thr = np.empty((n_lev, n_tree, n_split), np.float32)
    leaves = np.empty((n_lev, n_tree, n_leaf, d), np.float32)
    if n_lev:
        err, pos = _parse_forests(buf, pos, idx1, idx2, thr, leaves)
        if err:
            fail(err, pos)
    err, n_pix = _parse_pixel_count(buf, pos, n_lev)
    if err:
        fail(err, pos)
    if n_lev * n_pix * 2 > buf.shape[0]:
        fail(1, pos)
    anchor = np.empty((n_lev, n_pix), np.int32)
    deltas = np.empty((n_lev, n_pix, 2), np.float32)
    err, pos = _parse_pixels(buf, pos, d // 2, anchor, deltas)
    if err:
        fail(err, pos)
    if pos != buf.shape[0]:
        fail(10, pos)
    if idx1.size and max(idx1.max(), idx2.max()) >= n_pix:
        fail(9, pos)
    return init, idx1, idx2, thr, leaves, anchor, deltas


# --------------------------------------------------------------------------------------------
# dlib's unnormalizing transform
# --------------------------------------------------------------------------------------------
# dlib maps the normalised shape to the image with unnormalizing_tform(rect) =
# find_affine_transform(unit-square corners -> rect corners) = Q * pinv(P), P the corners
# (0,0), (1,0), (1,1) as columns of [x; y; 1] and Q the rectangle's tl, tr, br corners. dlib's pinv
# goes through its own SVD (svd4), whose result is inv(P) up to a few ulps: the transform is
# [[w, 0], [0, h]] + (left, top) to ~1e-16, and a coordinate landing exactly on .5 rounds by those
# ulps. So we compute pinv(P) as dlib does, operation for operation (without LAPACK, like the dlib
# wheels), once at import, and apply Q * pinv(P) in dlib's order (see _unnormalizing).


@numba.njit(cache=True, nogil=True)
def _svd4(a, u, q, v, e):
    """dlib::svd4(SVD_SKINNY_U, withv=true, a, u, q, v) without LAPACK (as the dlib wheels are
    built), operation for operation in float64: a [m,n] (m >= n) -> u [m,n], q [n], v [n,n] with
    a = u diag(q) v^T; e [n] is scratch. Returns dlib's error code (0, or the singular value that
    did not converge in 300 iterations: dlib then stops and uses what it has)."""
    m, n = a.shape
    eps = DBL_EPS
    tol = DBL_MIN / eps
    for i in range(m):
        for j in range(n):
            u[i, j] = a[i, j]
    retval = 0
    g = 0.0
    x = 0.0
    l = 0
    for i in range(n):  # Householder reduction to bidiagonal form
        e[i] = g
        s = 0.0
        l = i + 1
        for j in range(i, m):
            s += u[j, i] * u[j, i]
        if s < tol:
            g = 0.0
        else:
            f = u[i, i]
            g = math.sqrt(s) if f < 0 else -math.sqrt(s)
            h = f * g - s
            u[i, i] = f - g
            for j in range(l, n):
                s = 0.0
                for k in range(i, m):
                    s += u[k, i] * u[k, j]
                f = s / h
                for k in range(i, m):
                    u[k, j] += f * u[k, i]
        q[i] = g
        s = 0.0
        for j in range(l, n):
            s += u[i, j] * u[i, j]
        if s < tol:
            g = 0.0
        else:
            f = u[i, i + 1]
            g = math.sqrt(s) if f < 0 else -math.sqrt(s)
            h = f * g - s
            u[i, i + 1] = f - g
            for j in range(l, n):
                e[j] = u[i, j] / h
            for j in range(l, m):
                s = 0.0
                for k in range(l, n):
                    s += u[j, k] * u[i, k]
                for k in range(l, n):
                    u[j, k] += s * e[k]
        y = abs(q[i]) + abs(e[i])
        if y > x:
            x = y
    for i in range(n - 1, -1, -1):  # accumulation of right-hand transformations
        if g != 0.0:
            h = u[i, i + 1] * g
            for j in range(l, n):
                v[j, i] = u[i, j] / h
            for j in range(l, n):
                s = 0.0
                for k in range(l, n):
                    s += u[i, k] * v[k, j]
                for k in range(l, n):
                    v[k, j] += s * v[k, i]
        for j in range(l, n):
            v[i, j] = 0.0
            v[j, i] = 0.0
        v[i, i] = 1.0
        g = e[i]
        l = i
    for i in range(n - 1, -1, -1):  # accumulation of left-hand transformations (u is m x n)
        l = i + 1
        g = q[i]
        for j in range(l, n):
            u[i, j] = 0.0
        if g != 0.0:
            h = u[i, i] * g
            for j in range(l, n):
                s = 0.0
                for k in range(l, m):
                    s += u[k, i] * u[k, j]
                f = s / h
                for k in range(i, m):
                    u[k, j] += f * u[k, i]
            for j in range(i, m):
                u[j, i] /= g
        else:
            for j in range(i, m):
                u[j, i] = 0.0
        u[i, i] += 1.0
    eps *= x  # diagonalisation of the bidiagonal form
    for k in range(n - 1, -1, -1):
        it = 0
        while True:
            # test f splitting (e[0] is 0: the search stops at l = 0 at the latest)
            cancel = False
            l = k
            while l >= 0:
                if abs(e[l]) <= eps:
                    break
                if abs(q[l - 1]) <= eps:
                    cancel = True
                    break
                l -= 1
            if cancel:  # cancellation of e[l] if l > 0
                c = 0.0
                s = 1.0
                l1 = l - 1
                for i in range(l, k + 1):
                    f = s * e[i]
                    e[i] *= c
                    if abs(f) <= eps:
                        break
                    g = q[i]
                    h = math.sqrt(f * f + g * g)
                    q[i] = h
                    c = g / h
                    s = -f / h
                    for j in range(m):
                        y = u[j, l1]
                        z = u[j, i]
                        u[j, l1] = y * c + z * s
                        u[j, i] = -y * s + z * c
            # test f convergence
            z = q[k]
            if l == k:
                if z < 0.0:
                    q[k] = -z
                    for j in range(n):
                        v[j, k] = -v[j, k]
                break
            it += 1
            if it > 300:
                retval = k
                break
            x = q[l]  # shift from the bottom 2x2 minor
            y = q[k - 1]
            g = e[k - 1]
            h = e[k]
            f = ((y - z) * (y + z) + (g - h) * (g + h)) / (2 * h * y)
            g = math.sqrt(f * f + 1.0)
            f = ((x - z) * (x + z) + h * (y / ((f - g) if f < 0 else (f + g)) - h)) / x
            c = 1.0
            s = 1.0
            for i in range(l + 1, k + 1):  # next QR transformation
                g = e[i]
                y = q[i]
                h = s * g
                g *= c
                z = math.sqrt(f * f + h * h)
                e[i - 1] = z
                c = f / z
                s = h / z
                f = x * c + g * s
                g = -x * s + g * c
                h = y * s
                y *= c
                for j in range(n):
                    x = v[j, i - 1]
                    z = v[j, i]
                    v[j, i - 1] = x * c + z * s
                    v[j, i] = -x * s + z * c
                z = math.sqrt(f * f + h * h)
                q[i - 1] = z
                if z != 0:
                    c = f / z
                    s = h / z
                f = c * g + s * y
                x = -s * g + c * y
                for j in range(m):
                    y = u[j, i - 1]
                    z = u[j, i]
                    u[j, i - 1] = y * c + z * s
                    u[j, i] = -y * s + z * c
            e[l] = 0.0
            e[k] = f
            q[k] = x
        if retval:
            break
    return retval


def _pinv(a):
    """dlib::pinv(a) [n,m] of a square or tall a [m,n] (pinv_helper: svd3 -> svd4, then
    scale_columns(v, reciprocal(round_zeros(w, eps))) * trans(u)), float64 as dlib; pure Python."""
    a = np.asarray(a, np.float64)
    m, n = a.shape
    u, w, v, e = np.zeros((m, n)), np.zeros(n), np.zeros((n, n)), np.zeros(n)
    _svd4.py_func(a, u, w, v, e)
    eps = DBL_EPS * max(m, n) * w.max()
    r = [0.0 if abs(x) < eps else 1.0 / x for x in w.tolist()]  # reciprocal(round_zeros(w, eps))
    t = [[v[i, j] * r[j] for j in range(n)] for i in range(n)]
    out = np.zeros((n, m))
    for i in range(n):
        for j in range(m):
            acc = t[i][0] * u[j, 0]
            for k in range(1, n):
                acc += t[i][k] * u[j, k]
            out[i, j] = acc
    return out


UNIT_SQUARE_CORNERS = [[0.0, 1.0, 1.0], [0.0, 0.0, 1.0], [1.0, 1.0, 1.0]]  # P: (0,0), (1,0), (1,1) as [x; y; 1]
UNIT_SQUARE_PINV = np.array(_pinv(UNIT_SQUARE_CORNERS), np.float64)  # dlib's pinv(P) [3,3]


@numba.njit(cache=True, nogil=True)
def _unnormalizing(rect, pinv):
    """dlib unnormalizing_tform(rect) -> (m00, m01, b0, m10, m11, b1) (float64): m = Q * pinv(P),
    Q = [[left, right, right], [top, top, bottom]], each element summed left to right as dlib's
    matrix product; a point maps to ((m00*x + m01*y) + b0, (m10*x + m11*y) + b1)."""
    l = np.float64(rect[0])
    t = np.float64(rect[1])
    r = np.float64(rect[2])
    b = np.float64(rect[3])
    m00 = (l * pinv[0, 0] + r * pinv[1, 0]) + r * pinv[2, 0]
    m01 = (l * pinv[0, 1] + r * pinv[1, 1]) + r * pinv[2, 1]
    b0 = (l * pinv[0, 2] + r * pinv[1, 2]) + r * pinv[2, 2]
    m10 = (t * pinv[0, 0] + t * pinv[1, 0]) + b * pinv[2, 0]
    m11 = (t * pinv[0, 1] + t * pinv[1, 1]) + b * pinv[2, 1]
    b1 = (t * pinv[0, 2] + t * pinv[1, 2]) + b * pinv[2, 2]
    return m00, m01, b0, m10, m11, b1


# --------------------------------------------------------------------------------------------
# evaluation
# --------------------------------------------------------------------------------------------
@intrinsic
def _prefetch(typingctx, arr, idx):
    """Hint the CPU to fetch the cache line holding ``arr[idx]`` (1-D array, int index) ahead of use
    (llvm.prefetch, read, high locality): the leaves a face adds next are known in advance, and
    fetching them while the current ones are added hides most of the memory latency."""
    sig = numba.types.void(arr, idx)

    def codegen(context, builder, signature, args):
        ary = context.make_array(signature.args[0])(context, builder, args[0])
        ptr = cgutils.get_item_pointer(context, builder, signature.args[0], ary, [args[1]], wraparound=False)
        i8p = ir.IntType(8).as_pointer()
        i32 = ir.IntType(32)
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32]),
                                            "llvm.prefetch.p0i8")
        builder.call(fn, [builder.bitcast(ptr, i8p), i32(0), i32(3), i32(1)])
        return context.get_dummy_value()

    return sig, codegen



# --------------------------------------------------------------------------------------------
@numba.njit(cache=True, nogil=True)
def _similarity(init, shape, cov, u, q, v, e):
    """dlib find_tform_between_shapes(init -> shape).get_m() cast to float32, as dlib computes it
    (find_similarity_transform: Umeyama with means, variance and covariance in double, the covariance's
    SVD by svd4, reflection fix-up, c * u*s*v^T). init, shape: float32 [2K]; cov, u, v: float64
    [2,2] and q, e: [2] scratch. Returns the 2x2 matrix (t00, t01, t10, t11) as float32."""
    k = init.shape[0] // 2
    if k == 1:  # one landmark: the identity
        return np.float32(1.0), np.float32(0.0), np.float32(0.0), np.float32(1.0)
    mfx = 0.0
    mfy = 0.0
    mtx = 0.0
    mty = 0.0
    for i in range(k):
        mfx += np.float64(init[2 * i])
        mfy += np.float64(init[2 * i + 1])
        mtx += np.float64(shape[2 * i])
        mty += np.float64(shape[2 * i + 1])
    mfx /= k
    mfy /= k
    mtx /= k
    mty /= k
    sig = 0.0
    cov[:, :] = 0.0
    for i in range(k):
        fx = np.float64(init[2 * i]) - mfx
        fy = np.float64(init[2 * i + 1]) - mfy
        tx = np.float64(shape[2 * i]) - mtx
        ty = np.float64(shape[2 * i + 1]) - mty
        sig += fx * fx + fy * fy
        cov[0, 0] += tx * fx
        cov[0, 1] += tx * fy
        cov[1, 0] += ty * fx
        cov[1, 1] += ty * fy
    sig /= k
    for i in range(2):
        for j in range(2):
            cov[i, j] /= k
    _svd4(cov, u, q, v, e)
    s0 = 1.0
    s1 = 1.0
    det_cov = cov[0, 0] * cov[1, 1] - cov[0, 1] * cov[1, 0]
    det_u = u[0, 0] * u[1, 1] - u[0, 1] * u[1, 0]
    det_v = v[0, 0] * v[1, 1] - v[0, 1] * v[1, 0]
    if det_cov < 0 or (det_cov == 0 and det_u * det_v < 0):
        if q[1] < q[0]:
            s1 = -1.0
        else:
            s0 = -1.0
    # r = (u*s) * trans(v); the products with s's 0 and +-1 entries are exact
    r00 = (u[0, 0] * s0) * v[0, 0] + (u[0, 1] * s1) * v[0, 1]
    r01 = (u[0, 0] * s0) * v[1, 0] + (u[0, 1] * s1) * v[1, 1]
    r10 = (u[1, 0] * s0) * v[0, 0] + (u[1, 1] * s1) * v[0, 1]
    r11 = (u[1, 0] * s0) * v[1, 0] + (u[1, 1] * s1) * v[1, 1]
    c = 1.0
    if sig != 0:
        c = 1.0 / sig * (q[0] * s0 + q[1] * s1)  # trace(d*s)
    return np.float32(c * r00), np.float32(c * r01), np.float32(c * r10), np.float32(c * r11)


@numba.njit(cache=True, nogil=True)
def _predict_block(images, img_h, img_w, img_c, rects, face_img, f0, f1,
                   init, idx1, idx2, thr, leaves, anchor, deltas, pinv, out):
    """The cascade for faces f0..f1-1 (see ``_predict``), written to out[f0:f1]."""
    n = f1 - f0
    d = init.shape[0]
    k = d // 2
    n_lev, n_tree, n_split = idx1.shape
    n_pix = anchor.shape[1]
    n_leaf = leaves.shape[2]
    shape = np.empty((n, d), np.float32)
    for f in range(n):
        shape[f, :] = init
    feats = np.empty((n, n_pix), np.int32)
    chosen = np.empty((n, n_tree), np.int64)
    cov = np.empty((2, 2))  # scratch of _similarity
    su = np.empty((2, 2))
    sv = np.empty((2, 2))
    sq = np.empty(2)
    se = np.empty(2)
    for c in range(n_lev):
        for f in range(n):
            t00, t01, t10, t11 = _similarity(init, shape[f], cov, su, sq, sv, se)
            g = f0 + f
            m00, m01, b0, m10, m11, b1 = _unnormalizing(rects[g], pinv)
            im = face_img[g]
            pix = images[im]
            h, w, ch = img_h[im], img_w[im], img_c[im]
            cur = shape[f]
            fv = feats[f]
            for i in range(n_pix):
                j = anchor[c, i]
                dx = deltas[c, i, 0]
                dy = deltas[c, i, 1]
                # float32, as dlib: tform * delta + shape[anchor]
                px = (t00 * dx + t01 * dy) + cur[2 * j]
                py = (t10 * dx + t11 * dy) + cur[2 * j + 1]
                # double: tform_to_img, then point(): floor(v + 0.5)
                fx = np.float64(px)
                fy = np.float64(py)
                x = math.floor(((m00 * fx + m01 * fy) + b0) + POINT_ROUND)
                y = math.floor(((m10 * fx + m11 * fy) + b1) + POINT_ROUND)
                if x >= 0 and y >= 0 and x < w and y < h:
                    q = (np.int64(y) * w + np.int64(x)) * ch
                    if ch == 1:
                        fv[i] = pix[q]
                    else:
                        fv[i] = (np.int32(pix[q]) + np.int32(pix[q + 1]) + np.int32(pix[q + 2])) // GREY_DIVISOR
                else:
                    fv[i] = 0
        # every tree's leaf first (the walks depend only on the features), then the additions in
        # tree order (float32, as dlib), tree-major so that a tree's leaves serve the whole block
        s1 = idx1[c].reshape(-1)
        s2 = idx2[c].reshape(-1)
        st = thr[c].reshape(-1)
        for f in range(n):
            fv = feats[f]
            for t in range(n_tree):
                if n_split and t + PREFETCH_TREES < n_tree:  # split tables of a later tree (first, last node)
                    for q in ((t + PREFETCH_TREES) * n_split, (t + PREFETCH_TREES + 1) * n_split - 1):
                        _prefetch(s1, q)
                        _prefetch(s2, q)
                        _prefetch(st, q)
                node = 0
                while node < n_split:
                    # integer difference of two intensities: exact in float32, as dlib's (whose
                    # test is "> thresh goes left": a NaN threshold sends every face right)
                    go_right = not (np.float32(fv[idx1[c, t, node]] - fv[idx2[c, t, node]]) > thr[c, t, node])
                    node = 2 * node + 1 + np.int64(go_right)
                chosen[f, t] = node - n_split
        lv = leaves[c].reshape(-1)
        for t in range(n_tree):
            ahead = t + PREFETCH_TREES
            for f in range(n):
                if ahead < n_tree:  # the leaf this face adds PREFETCH_TREES trees later
                    base = (ahead * n_leaf + chosen[f, ahead]) * d
                    for e in range(0, d, FLOATS_PER_LINE):
                        _prefetch(lv, base + e)
                leaf = leaves[c, t, chosen[f, t]]
                cur = shape[f]
                for e in range(d):
                    cur[e] += leaf[e]
    for f in range(n):
        g = f0 + f
        m00, m01, b0, m10, m11, b1 = _unnormalizing(rects[g], pinv)
        for i in range(k):
            fx = np.float64(shape[f, 2 * i])
            fy = np.float64(shape[f, 2 * i + 1])
            out[g, i, 0] = (m00 * fx + m01 * fy) + b0
            out[g, i, 1] = (m10 * fx + m11 * fy) + b1


@numba.njit(cache=True, nogil=True)
def _predict(images, img_h, img_w, img_c, rects, face_img,
             init, idx1, idx2, thr, leaves, anchor, deltas, pinv, block):
    """Evaluate the cascade for n faces, ``block`` faces at a time (tree-major within a block, so
    that a tree's leaves are read once per block while the block's shapes stay in cache).

    images: numba typed List of m uint8 [H*W*C] arrays (each image flattened: row-major, channels last);
    img_h/img_w/img_c: int64 [m] height, width, channels (1 or 3);
    rects: int64 [n,4] dlib rectangles (left, top, right, bottom); face_img: int64 [n] image of each face.
    Returns float64 [n, K, 2]: the final points in image pixels, before dlib's rounding.
    """
    n = rects.shape[0]
    out = np.empty((n, init.shape[0] // 2, 2), np.float64)
    for f0 in range(0, n, block):
        _predict_block(images, img_h, img_w, img_c, rects, face_img, f0, min(n, f0 + block),
                       init, idx1, idx2, thr, leaves, anchor, deltas, pinv, out)
    return out


def round_like_dlib(points: np.ndarray) -> np.ndarray:
    """dlib's vector<double,2> -> point conversion: floor(v + 0.5) as int64 (same shape)."""
    return np.floor(np.asarray(points, np.float64) + POINT_ROUND).astype(np.int64)


# --------------------------------------------------------------------------------------------
# model
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ErtModel:
    """A parsed dlib shape predictor (C levels of T trees with S splits and L = S+1 leaves, P pixels per
    level, K points).

    initial_shape: float32 [K,2] normalised (the face rectangle spans (0,0)..(1,1));
    idx1, idx2: int32 [C,T,S] feature pixels compared at each split; thresh: float32 [C,T,S];
    leaves: float32 [C,T,L,2K] shape increments; anchor: int32 [C,P] point each feature pixel hangs
    on; deltas: float32 [C,P,2] its offset from that point in the initial shape's frame.
    """

    initial_shape: np.ndarray
    idx1: np.ndarray
    idx2: np.ndarray
    thresh: np.ndarray
    leaves: np.ndarray
    anchor: np.ndarray
    deltas: np.ndarray
    path: str = ""

    @property
    def n_points(self) -> int:
        return self.initial_shape.shape[0]

    @classmethod
    def load(cls, path) -> ErtModel:
        """Parse ``path`` (dlib's serialization); zoo.ModelError naming the file when it is not a valid one."""
        path = Path(path)
        try:
            buf = np.fromfile(path, np.uint8)
        except OSError as e:
            raise zoo.ModelError(f"cannot read dlib shape predictor {path}: {e.strerror or e}") from None
        return cls.from_bytes(buf, str(path))

    @classmethod
    def from_bytes(cls, buf, name: str = "<bytes>") -> ErtModel:
        """Parse a serialized shape_predictor held in memory (bytes or uint8 array)."""
        buf = np.frombuffer(buf, np.uint8) if isinstance(buf, (bytes, bytearray, memoryview)) else \
            np.ascontiguousarray(buf, np.uint8)
        init, idx1, idx2, thr, leaves, anchor, deltas = _parse(buf, name)
        return cls(init.reshape(-1, 2), idx1, idx2, thr, leaves, anchor, deltas, name)

    def predict(self, images, rects_ltrb, image_index=None, threads: int = 1) -> np.ndarray:
        """Points float64 [n,K,2] (image pixels, before rounding) for n faces.

        images: a list of uint8 images, RGB [H,W,3] or grey [H,W] (or one such array);
        rects_ltrb: int [n,4] dlib rectangles (left, top, right, bottom; right/bottom inclusive, pixels);
        image_index: int [n] the image each face is in (default: all in image 0);
        threads: faces are shared among this many threads (the compiled code releases the GIL).
        ``round_like_dlib(result)`` equals the points of ``dlib.shape_predictor(image, rect)``.
        """
        if isinstance(images, np.ndarray):
            images = [images]
        rects = np.ascontiguousarray(np.asarray(rects_ltrb, np.int64).reshape(-1, 4))
        n = rects.shape[0]
        idx = np.zeros(n, np.int64) if image_index is None else np.ascontiguousarray(image_index, np.int64).ravel()
        if idx.shape[0] != n:
            raise ValueError(f"image_index has {idx.shape[0]} entries for {n} rectangles")
        if n and (idx.min() < 0 or idx.max() >= len(images)):
            raise ValueError(f"image_index out of range (0..{len(images) - 1})")
        if n == 0:
            return np.zeros((0, self.n_points, 2), np.float64)
        used, local = np.unique(idx, return_inverse=True)  # only the images that hold faces are read
        m = len(used)
        h = np.zeros(m, np.int64)
        w = np.zeros(m, np.int64)
        ch = np.ones(m, np.int64)
        flats = []  # views, not copies, of contiguous images
        for i, u in enumerate(used):
            im = np.asarray(images[u])
            if im.dtype != np.uint8 or not (im.ndim == 2 or (im.ndim == 3 and im.shape[2] in (1, 3))):
                raise ValueError(f"image {u}: expected uint8 [H,W] or [H,W,3], got {im.dtype} {im.shape}")
            h[i], w[i] = im.shape[:2]
            ch[i] = 1 if im.ndim == 2 else im.shape[2]
            flats.append(np.ascontiguousarray(im).reshape(-1))
        flats = List(flats)  # (List(list) is ~10x faster than appending to an empty typed List)
        local = local.astype(np.int64).ravel()

        def run(lo, hi):
            return _predict(flats, h, w, ch, rects[lo:hi], local[lo:hi], self.initial_shape.reshape(-1),
                            self.idx1, self.idx2, self.thresh, self.leaves, self.anchor, self.deltas,
                            UNIT_SQUARE_PINV, FACE_BLOCK)

        threads = max(1, min(int(threads), n))
        if threads == 1:
            return run(0, n)
        from concurrent.futures import ThreadPoolExecutor

        cuts = np.linspace(0, n, threads + 1).round().astype(int)
        with ThreadPoolExecutor(threads) as pool:
            parts = list(pool.map(run, cuts[:-1], cuts[1:]))
        return np.concatenate(parts)


_CACHE: dict[tuple[str, str], ErtModel] = {}
_LOCK = threading.Lock()


def cache_file(weights: zoo.Resolved) -> Path:
    """Where the parsed arrays of ``weights`` are kept: ``$FACEKIT_HOME/models/<model>/ert-<sha256>.npz``."""
    return zoo.home() / "models" / weights.model / f"ert-v{CACHE_VERSION}-{weights.sha256}.npz"


def _read_cache(path: Path) -> ErtModel | None:
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in _ARRAYS}
    except Exception:  # noqa: BLE001 - absent, partial or foreign (OSError, BadZipFile, KeyError...): parse again
        return None
    m = ErtModel(**arrays)
    c, t, s_ = m.idx1.shape
    ok = (m.initial_shape.ndim == 2 and m.initial_shape.shape[1] == 2
          and m.idx2.shape == m.thresh.shape == (c, t, s_) and m.leaves.shape[:3] == (c, t, s_ + 1)
          and m.leaves.shape[3] == 2 * m.n_points and m.anchor.shape[0] == c
          and m.deltas.shape == m.anchor.shape + (2,)
          and all(getattr(m, k).dtype == dt for k, dt in _ARRAYS.items()))
    # indices are used unchecked by the compiled code: a cache must keep them in range
    ok = ok and (m.idx1.size == 0 or max(m.idx1.max(), m.idx2.max()) < m.anchor.shape[1]) \
        and min(m.idx1.min(initial=0), m.idx2.min(initial=0), m.anchor.min(initial=0)) >= 0 \
        and m.anchor.max(initial=0) < m.n_points
    return m if ok else None


def _write_cache(path: Path, m: ErtModel) -> None:
    """Atomically (temporary file, then rename); a cache that cannot be written is skipped."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            np.savez(f, **{k: getattr(m, k) for k in _ARRAYS})
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)


def load(weights: zoo.Resolved, cache: bool = True) -> ErtModel:
    """The parsed model for resolved weights: parsed once per process (keyed by path and sha256) and,
    with ``cache``, kept in ``cache_file(weights)`` so later processes read arrays instead of parsing."""
    key = (str(weights.path), weights.sha256)
    with _LOCK:
        if key not in _CACHE:
            path = cache_file(weights) if cache and weights.sha256 else None
            m = _read_cache(path) if path is not None else None
            if m is None:
                m = ErtModel.load(weights.path)
                if path is not None:
                    _write_cache(path, m)
            _CACHE[key] = ErtModel(**{k: getattr(m, k) for k in _ARRAYS}, path=str(weights.path))
        return _CACHE[key]
