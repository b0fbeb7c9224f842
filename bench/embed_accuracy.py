"""Embedding figures of docs/accuracy.md, measured on shared/data through facekit's own detector,
crops and backbones.

    python bench/embed_accuracy.py [--data ../shared/data] [--models sface,efficientnet-lite0]

1. identity verification on the deepface same/different pairs (identity/deepface/master.csv, the
   pairs whose two files are in shared data): ROC-AUC of the cosine, and accuracy at the published
   threshold (SFace: cosine >= 0.363, OpenCV Zoo) and at the best threshold;
2. clustering identity/dlib/bald_guys.jpg (a collage of 4 people): agglomerative clustering
   (average linkage) of cosine distances cut at 1 - threshold -> number of clusters found;
3. throughput in faces/s of each backbone (crops already made; model calls of 32 crops).
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from facekit.face import embed  # noqa: E402
from facekit.face.detect import load_detector  # noqa: E402
from facekit.media import _read_image  # noqa: E402

#: published "same person" cosine thresholds (None: no published threshold; the best one is reported)
THRESHOLDS = {"sface": embed.SFACE_THRESHOLD, "arcface-r50": None, "efficientnet-lite0": None,
              "enet-b0-8-best-vgaf": None}
THROUGHPUT_FACES = 64
DETECT_SIDE = 800  # pixels: images are searched for faces at this size first (faces_of)


def faces_of(path: Path, max_side: int = DETECT_SIDE):
    """(rgb, kps5 [K,5,2], boxes [K,4]) of the faces YuNet finds in an image, largest first.

    The image is searched downscaled to ``max_side`` pixels (points mapped back to full-size
    pixels, pixel-centre convention), then at full size if nothing was found: YuNet misses faces
    that fill a large photo (its largest anchors are far smaller than a 1000-px face), and the
    downscaled search is much faster. The crops are always warped from the full-size image."""
    import cv2

    rgb = _read_image(str(path))
    h, w = rgb.shape[:2]
    s = min(1.0, max_side / max(h, w))
    small = cv2.resize(rgb, (round(w * s), round(h * s)), interpolation=cv2.INTER_AREA) if s < 1 else rgb
    boxes, _, kps = load_detector("yunet").detect(small)
    if len(boxes):
        sx, sy = small.shape[1] / w, small.shape[0] / h
        boxes = np.asarray(boxes, np.float64).reshape(-1, 2, 2)
        boxes = ((boxes + 0.5) / (sx, sy) - 0.5).reshape(-1, 4)
        kps = (np.asarray(kps, np.float64) + 0.5) / (sx, sy) - 0.5
    elif s < 1:
        boxes, _, kps = load_detector("yunet").detect(rgb)
    order = np.argsort(-(boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])) if len(boxes) else []
    return rgb, np.asarray(kps)[order], np.asarray(boxes)[order]


def _embedding(model, path: Path):
    rgb, kps, _ = faces_of(path)
    if not len(kps):
        return None
    return embed.embed_faces(model, rgb[None], np.array([0]), kps[:1])[0]


def roc_auc(scores, labels) -> float:
    """Area under the ROC curve (probability a same pair outscores a different pair; ties 1/2)."""
    s = np.asarray(scores, np.float64)
    y = np.asarray(labels, bool)
    pos, neg = s[y], s[~y]
    return float(((pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum())
                 / max(len(pos) * len(neg), 1))


def verification(data: Path, name: str = "sface") -> dict:
    d = Path(data) / "identity" / "deepface"
    model = embed.load(name)
    cache: dict[str, np.ndarray | None] = {}
    scores, labels, missing_face = [], [], 0
    with open(d / "master.csv", newline="") as fh:
        for row in csv.DictReader(fh):
            a, b = row["file_x"], row["file_y"]
            if not (d / a).is_file() or not (d / b).is_file():
                continue
            for f in (a, b):
                if f not in cache:
                    cache[f] = _embedding(model, d / f)
            if cache[a] is None or cache[b] is None:
                missing_face += 1
                continue
            scores.append(float(embed.cosine(cache[a], cache[b])))
            labels.append(row["Decision"].strip().lower() == "yes")
    s, y = np.array(scores), np.array(labels)
    th = THRESHOLDS.get(name)
    cands = np.unique(s)
    best = max(((np.mean((s >= t) == y), t) for t in cands), default=(0.0, 0.0))
    return {"model": name, "pairs": len(s), "same": int(y.sum()), "different": int((~y).sum()),
            "no_face": missing_face, "auc": roc_auc(s, y),
            "threshold": th, "accuracy": float(np.mean((s >= th) == y)) if th is not None else None,
            "best_threshold": float(best[1]), "best_accuracy": float(best[0])}


def clustering(data: Path, name: str = "sface", threshold: float | None = None) -> dict:
    from scipy.cluster.hierarchy import fcluster, linkage

    model = embed.load(name)
    rgb, kps, _ = faces_of(Path(data) / "identity" / "dlib" / "bald_guys.jpg")
    e = embed.embed_faces(model, rgb[None], np.zeros(len(kps), np.int64), kps)
    u = e / np.linalg.norm(e, axis=1, keepdims=True)
    th = threshold if threshold is not None else (THRESHOLDS.get(name) or 0.5)
    dist = np.clip(1.0 - u @ u.T, 0, 2)
    iu = np.triu_indices(len(u), 1)
    labels = fcluster(linkage(dist[iu], method="average"), t=1.0 - th, criterion="distance")
    sizes = sorted(np.bincount(labels)[1:].tolist(), reverse=True)
    return {"model": name, "faces": len(u), "threshold": th, "clusters": len(sizes), "sizes": sizes}


def rejoin(data: Path, threshold: float = 0.5) -> dict:
    """Tracks of the hamilton clip without and with --track-rejoin: which tracks merge."""
    import tempfile

    import facekit

    src = Path(data) / "videos" / "hamilton_multiface.mp4"
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, kw in (("plain", {}), ("rejoin", {"track_rejoin": threshold})):
            p = Path(tmp) / f"{name}.h5"
            facekit.extract([src], p, stages="detect,track", **kw)
            with facekit.open(p) as st:
                g = st[list(st)[0]].group
                out[name] = {k: g[f"tracks/{k}"][()].tolist() for k in ("id", "first_frame", "last_frame", "shot")}
    return out


def throughput(name: str, n: int = THROUGHPUT_FACES, repeats: int = 3) -> dict:
    model = embed.load(name)
    s = model.spec.size
    crops = np.random.default_rng(0).integers(0, 255, (n, s, s, 3), dtype=np.uint8)
    model(crops[:8])  # warm-up
    best = cpu = np.inf
    for _ in range(repeats):
        t, c = time.perf_counter(), time.process_time()
        model(crops)
        best = min(best, time.perf_counter() - t)
        cpu = min(cpu, time.process_time() - c)
    return {"model": name, "faces_per_s": n / best, "ms_per_face": 1000 * best / n,
            "cpu_ms_per_face": 1000 * cpu / n, "load": os.getloadavg()[0]}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=os.environ.get("FACEKIT_TEST_DATA", "../shared/data"))
    ap.add_argument("--models", default="sface,efficientnet-lite0")
    ap.add_argument("--throughput-only", action="store_true")
    args = ap.parse_args()
    names = embed.parse_names(args.models)
    for n in names:
        if args.throughput_only:
            t = throughput(n)
            print(f"{n}: {t['faces_per_s']:.1f} faces/s ({t['ms_per_face']:.1f} ms/face wall, "
                  f"{t['cpu_ms_per_face']:.1f} CPU-ms/face; batches of 32, {os.cpu_count()} CPU cores, "
                  f"load average {t['load']:.1f})")
            continue
        v = verification(Path(args.data), n)
        acc = f"{v['accuracy']:.3f} at {v['threshold']}" if v["accuracy"] is not None else "n/a"
        print(f"{n}: deepface pairs {v['pairs']} ({v['same']} same, {v['different']} different, "
              f"{v['no_face']} without a face): ROC-AUC {v['auc']:.3f}; accuracy {acc}; "
              f"best {v['best_accuracy']:.3f} at {v['best_threshold']:.3f}")
        c = clustering(Path(args.data), n, v["threshold"] if v["threshold"] is not None else v["best_threshold"])
        print(f"{n}: bald_guys.jpg: {c['faces']} faces -> {c['clusters']} clusters at cosine {c['threshold']:.3f} "
              f"(sizes {c['sizes']})")
        if n == "sface":
            r = rejoin(Path(args.data))
            print(f"hamilton tracks (first frame, last frame, shot): plain "
                  f"{list(zip(r['plain']['first_frame'], r['plain']['last_frame'], r['plain']['shot']))}; "
                  f"--track-rejoin 0.5 {list(zip(r['rejoin']['first_frame'], r['rejoin']['last_frame'], r['rejoin']['shot']))}")
        t = throughput(n)
        print(f"{n}: {t['faces_per_s']:.1f} faces/s ({t['ms_per_face']:.1f} ms/face wall, "
              f"{t['cpu_ms_per_face']:.1f} CPU-ms/face; batches of 32, {os.cpu_count()} CPU cores, "
              f"load average {t['load']:.1f})")


if __name__ == "__main__":
    main()
