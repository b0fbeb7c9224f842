"""Levenberg-Marquardt refinement of camera poses (rotation, translation) by the reprojection error.

``refine_many`` minimises, for each face, the sum of squared pixel distances between the projected
3-D model points and the 2-D landmarks -- what ``cv2.solvePnPRefineLM`` minimises -- starting from
a pose (``cv2.solvePnP`` with SQPnP in ``facekit.face.pose``). Compiled by numba, all faces of a
batch in one call: ~0.1 ms a face instead of ~1 ms for OpenCV's refinement, at the same minimum
(angles within 5e-6 degrees, RMS errors within 1e-13 px on the shared clips).

Parametrisation: R <- exp([w]x) R (a rotation increment w in radians on the left), t <- t + dt
(model units). Damping starts at ``lam0`` x the mean diagonal of J^T J, is divided by 10 after a
step that lowers the cost and multiplied by 10 after one that does not (at most ``tries`` times).
A face stops after ``max_iter`` iterations, when a step is below ``step_tol`` in every component,
when an accepted step lowers the cost by less than ``cost_tol`` of it, or when no step lowers it.
"""

from __future__ import annotations

import math
import numba
import numpy as np


@numba.njit(cache=True, nogil=True)
def _rot(w):
    """Rotation matrix of the rotation vector w [3] (Rodrigues; first order below 1e-12 rad)."""
    th = math.sqrt(w[0] * w[0] + w[1] * w[1] + w[2] * w[2])
    R = np.eye(3)
    if th < 1e-12:
        R[0, 1], R[0, 2], R[1, 2] = -w[2], w[1], -w[0]
        R[1, 0], R[2, 0], R[2, 1] = w[2], -w[1], w[0]
        return R
    k0, k1, k2 = w[0] / th, w[1] / th, w[2] / th
    s, c = math.sin(th), math.cos(th)
    C = 1.0 - c
    R[0, 0] = c + k0 * k0 * C
    R[0, 1] = k0 * k1 * C - k2 * s
    R[0, 2] = k0 * k2 * C + k1 * s
    R[1, 0] = k1 * k0 * C + k2 * s
    R[1, 1] = c + k1 * k1 * C
    R[1, 2] = k1 * k2 * C - k0 * s
    R[2, 0] = k2 * k0 * C - k1 * s
    R[2, 1] = k2 * k1 * C + k0 * s
    R[2, 2] = c + k2 * k2 * C
    return R


@numba.njit(cache=True, nogil=True)
def _cost(obj, pts, fx, fy, cx, cy, R, t):
    """Sum of squared reprojection errors (pixels^2) of one face."""
    s = 0.0
    for p in range(obj.shape[0]):
        X = R[0, 0] * obj[p, 0] + R[0, 1] * obj[p, 1] + R[0, 2] * obj[p, 2] + t[0]
        Y = R[1, 0] * obj[p, 0] + R[1, 1] * obj[p, 1] + R[1, 2] * obj[p, 2] + t[1]
        Z = R[2, 0] * obj[p, 0] + R[2, 1] * obj[p, 1] + R[2, 2] * obj[p, 2] + t[2]
        du = fx * X / Z + cx - pts[p, 0]
        dv = fy * Y / Z + cy - pts[p, 1]
        s += du * du + dv * dv
    return s


@numba.njit(cache=True, nogil=True)
def refine_many(obj, pts, fx, fy, cx, cy, Rs, ts, max_iter, tries, step_tol, cost_tol, lam0):
    """Refine in place ``Rs`` float64 [N,3,3] (head -> camera) and ``ts`` [N,3] for ``pts`` [N,P,2]
    pixels of the model points ``obj`` [P,3], with pinhole intrinsics fx, fy, cx, cy. Faces whose
    starting cost is not finite are left as they are."""
    n = Rs.shape[0]
    P = obj.shape[0]
    A = np.empty((6, 6))
    g = np.empty(6)
    for f in range(n):
        R = Rs[f].copy()
        t = ts[f].copy()
        cost = _cost(obj, pts[f], fx, fy, cx, cy, R, t)
        if not math.isfinite(cost):
            continue
        lam = -1.0
        for it in range(max_iter):
            A[:] = 0.0
            g[:] = 0.0
            for p in range(P):
                qx = R[0, 0] * obj[p, 0] + R[0, 1] * obj[p, 1] + R[0, 2] * obj[p, 2]
                qy = R[1, 0] * obj[p, 0] + R[1, 1] * obj[p, 1] + R[1, 2] * obj[p, 2]
                qz = R[2, 0] * obj[p, 0] + R[2, 1] * obj[p, 1] + R[2, 2] * obj[p, 2]
                X, Y, Z = qx + t[0], qy + t[1], qz + t[2]
                ru = fx * X / Z + cx - pts[f, p, 0]
                rv = fy * Y / Z + cy - pts[f, p, 1]
                # rows of d(u,v)/dX
                a0, a1, a2 = fx / Z, 0.0, -fx * X / (Z * Z)
                b0, b1, b2 = 0.0, fy / Z, -fy * Y / (Z * Z)
                ju = (qy * a2 - qz * a1, qz * a0 - qx * a2, qx * a1 - qy * a0, a0, a1, a2)
                jv = (qy * b2 - qz * b1, qz * b0 - qx * b2, qx * b1 - qy * b0, b0, b1, b2)
                for i in range(6):
                    g[i] += ju[i] * ru + jv[i] * rv
                    for j in range(6):
                        A[i, j] += ju[i] * ju[j] + jv[i] * jv[j]
            if lam < 0:
                tr = 0.0
                for i in range(6):
                    tr += A[i, i]
                lam = lam0 * tr / 6
            done = False
            improved = False
            for _ in range(tries):
                D = A.copy()
                for i in range(6):
                    D[i, i] += lam
                step = -np.linalg.solve(D, g)
                smax = 0.0
                for i in range(6):
                    smax = max(smax, abs(step[i]))
                if not (smax >= step_tol):
                    done = True
                    break
                R2 = _rot(step[:3]) @ R
                t2 = t + step[3:]
                c2 = _cost(obj, pts[f], fx, fy, cx, cy, R2, t2)
                if math.isfinite(c2) and c2 <= cost:
                    if cost - c2 <= cost_tol * cost:
                        done = True
                    R, t, cost = R2, t2, c2
                    lam /= 10
                    improved = True
                    break
                lam *= 10
            if done or not improved:
                break
        Rs[f] = R
        ts[f] = t
