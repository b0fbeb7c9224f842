"""Putting one stream on another stream's clock: ``nearest``, ``linear`` or ``mean``.

Every stream of the store keeps its own time stamps (``frames/t``, ``audio/<name>/t``, in seconds on
the video's clock). Resampling is an explicit step, done by :func:`resample` (used by the reader,
``Video.stream(..., clock="video")``, and by ``facekit export --clock``):

``nearest``
    each target time takes the source row whose time is closest (ties: the earlier row).
``linear``
    linear interpolation between the two source rows around each target time.
``mean``
    each target frame ``k`` owns the span from the midpoint with its previous frame to the midpoint
    with its next one (the first and last spans extend by half their neighbouring interval, so a
    constant frame rate gives every frame exactly ``1 / fps``); the value is the mean of the source
    rows whose time falls in the span, ``[lo, hi)``. A span holding no source row (the source is
    coarser than the target) takes the nearest row instead, so ``mean`` degrades to ``nearest``.

Coverage: a source covers ``[t[0] - h/2, t[-1] + h/2]`` where ``h`` is its median step (its hop).
Target times outside it get NaN rows: there is no data there (audio that starts late, a video longer
than its audio track, an empty stream). Inside it, ``linear`` holds the edge value beyond the first
and last centres. Integer sources (e.g. quantised features) come back as float64 so NaN can mark
the gaps; floating sources keep their dtype.

Worked example, log-Mel (100 rows/s, ``t = 0.00, 0.01, ...``) onto 25 fps video
(``t = 0.00, 0.04, 0.08, ...``): ``nearest`` picks mel rows 0, 4, 8, ...; ``linear`` gives the same
rows (the frame times fall exactly on window centres); ``mean`` averages rows 0-1 for frame 0 (span
``[-0.02, 0.02)``, only the centres 0.00 and 0.01 are inside), rows 2-5 for frame 1
(``[0.02, 0.06)``), rows 6-9 for frame 2, and so on: four mel windows per video frame.
"""

from __future__ import annotations

import numpy as np

METHODS = ("nearest", "linear", "mean")


def _as_times(t, name: str) -> np.ndarray:
    t = np.asarray(t, dtype=np.float64).reshape(-1)
    if t.size > 1 and not np.all(np.diff(t) >= 0):
        raise ValueError(f"{name} times must be non-decreasing")
    return t


def step(t) -> float:
    """The typical step (median difference) of a time axis in seconds; 0.0 with fewer than 2 times."""
    t = np.asarray(t, dtype=np.float64)
    return float(np.median(np.diff(t))) if t.size > 1 else 0.0


def spans(t_dst) -> tuple[np.ndarray, np.ndarray]:
    """``(lo, hi)`` [F] seconds: the span each target frame owns (see the module docstring)."""
    t = _as_times(t_dst, "target")
    if t.size == 0:
        return t.copy(), t.copy()
    if t.size == 1:
        return t.copy(), t.copy()  # a lone frame owns only its instant (mean -> nearest)
    mid = 0.5 * (t[1:] + t[:-1])
    lo = np.concatenate([[t[0] - (mid[0] - t[0])], mid])
    hi = np.concatenate([mid, [t[-1] + (t[-1] - mid[-1])]])
    return lo, hi


def nearest_index(t_src, t_dst) -> np.ndarray:
    """Row of ``t_src`` closest to each ``t_dst`` (ties: the earlier row). [F] int64; needs len(t_src) > 0."""
    ts = _as_times(t_src, "source")
    td = np.asarray(t_dst, dtype=np.float64).reshape(-1)
    i = np.clip(np.searchsorted(ts, td), 1, max(len(ts) - 1, 1))
    if len(ts) == 1:
        return np.zeros(td.shape, np.int64)
    i = i - ((td - ts[i - 1]) <= (ts[i] - td))
    return i.astype(np.int64)


def covered(t_src, t_dst, hop: float | None = None) -> np.ndarray:
    """[F] bool: which target times lie in the source's coverage ``[t0 - h/2, tN + h/2]``."""
    ts = _as_times(t_src, "source")
    td = np.asarray(t_dst, dtype=np.float64).reshape(-1)
    if ts.size == 0:
        return np.zeros(td.shape, bool)
    h = step(ts) if hop is None else float(hop)
    eps = 1e-9
    return (td >= ts[0] - h / 2 - eps) & (td <= ts[-1] + h / 2 + eps)


def resample(data, t_src, t_dst, method: str = "nearest", hop: float | None = None) -> np.ndarray:
    """Put ``data`` [T, ...] sampled at ``t_src`` [T] seconds onto ``t_dst`` [F] seconds.

    Returns [F, ...]: float (the source's float dtype, or float64 for integer sources) with NaN rows
    where ``t_dst`` is outside the source's coverage. ``hop``: the source's step in seconds, for the
    coverage test (default: the median step of ``t_src``; give it for streams of one row).
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r} (choose from {', '.join(METHODS)})")
    data = np.asarray(data)
    ts = _as_times(t_src, "source")
    td = _as_times(t_dst, "target")
    if data.shape[0] != ts.size:
        raise ValueError(f"data has {data.shape[0]} rows for {ts.size} time stamps")
    dtype = data.dtype if np.issubdtype(data.dtype, np.floating) else np.float64
    out = np.full((td.size,) + data.shape[1:], np.nan, dtype=dtype)
    ok = covered(ts, td, hop)
    if ts.size == 0 or not ok.any():
        return out
    tdo = td[ok]
    if method == "nearest":
        out[ok] = data[nearest_index(ts, tdo)]
    elif method == "linear":
        if ts.size == 1:
            out[ok] = data[0]
        else:
            x = np.clip(tdo, ts[0], ts[-1])
            i1 = np.clip(np.searchsorted(ts, x, side="right"), 1, ts.size - 1)
            i0 = i1 - 1
            dt = ts[i1] - ts[i0]
            w = np.where(dt > 0, (x - ts[i0]) / np.where(dt > 0, dt, 1.0), 0.0)
            w = w.reshape((-1,) + (1,) * (data.ndim - 1))
            out[ok] = (data[i0] * (1.0 - w) + data[i1] * w).astype(dtype)
    else:  # mean
        lo, hi = spans(td)
        lo, hi = lo[ok], hi[ok]
        a = np.searchsorted(ts, lo, side="left")
        b = np.searchsorted(ts, hi, side="left")
        csum = np.concatenate([np.zeros((1,) + data.shape[1:]), np.cumsum(data, axis=0, dtype=np.float64)])
        n = (b - a).reshape((-1,) + (1,) * (data.ndim - 1))
        mean = (csum[b] - csum[a]) / np.maximum(n, 1)
        empty = (b - a) == 0
        if empty.any():
            mean[empty] = data[nearest_index(ts, tdo[empty])]
        out[ok] = mean.astype(dtype)
    return out
