"""Temporal smoothing of landmarks along a track: the One-Euro filter.

Casiez, Roussel, Vogel. "1 Euro Filter: A Simple Speed-based Low-pass Filter for Noisy Input in
Interactive Systems." CHI 2012. An exponential low-pass whose cutoff rises with speed: still
points are smoothed hard (jitter removed), moving points follow with little lag.

    cutoff = min_cutoff + beta * |d point / dt|     (Hz; speed in pixels/s)
    alpha  = 1 / (1 + 1 / (2 pi cutoff dt))

Off by default (``--smooth``): it changes the points, and a trainer may prefer raw detections.
"""

from __future__ import annotations

import math

import numpy as np

MIN_CUTOFF = 1.0  # Hz: cutoff for still points (lower = smoother, more lag)
BETA = 0.05  # s/pixel: how fast the cutoff rises with speed (higher = less lag when moving)
D_CUTOFF = 1.0  # Hz: cutoff of the speed estimate


def _alpha(cutoff, dt):
    return 1.0 / (1.0 + 1.0 / (2 * math.pi * cutoff * dt))


class OneEuro:
    """One-Euro filter over arrays of points (any shape), fed one time step at a time."""

    def __init__(self, min_cutoff: float = MIN_CUTOFF, beta: float = BETA, d_cutoff: float = D_CUTOFF):
        self.min_cutoff, self.beta, self.d_cutoff = min_cutoff, beta, d_cutoff
        self.x = self.dx = self.t = None

    def __call__(self, t: float, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, np.float64)
        if self.x is None or t <= self.t or not np.isfinite(x).all():
            self.x, self.dx, self.t = x, np.zeros_like(x), t
            return x
        dt = t - self.t
        dx = (x - self.x) / dt
        self.dx = self.dx + _alpha(self.d_cutoff, dt) * (dx - self.dx)
        cutoff = self.min_cutoff + self.beta * np.abs(self.dx)
        a = 1.0 / (1.0 + 1.0 / (2 * math.pi * cutoff * dt))
        self.x = self.x + a * (x - self.x)
        self.t = t
        return self.x


class TrackSmoother:
    """One filter per track id; ``__call__(t, track_ids [n], points [n,...]) -> smoothed points``."""

    def __init__(self, min_cutoff: float = MIN_CUTOFF, beta: float = BETA):
        self.min_cutoff, self.beta = min_cutoff, beta
        self._filters: dict[int, OneEuro] = {}

    def __call__(self, t: float, track_ids, points) -> np.ndarray:
        out = np.array(points, np.float64, copy=True)
        for j, tid in enumerate(np.asarray(track_ids)):
            if tid < 0:
                continue
            f = self._filters.setdefault(int(tid), OneEuro(self.min_cutoff, self.beta))
            out[j] = f(t, out[j])
        return out
