"""Keyframe detection (``--detect-every N``) against detection on every frame, on the shared clips.

    python bench/keyframe_accuracy.py [--data ../shared/data] [--every 2,3,5] [CLIP ...]

For each clip, `facekit extract --stages track,landmarks` with N = 1 (the reference) and each N:
faces are matched per frame to the reference faces (Hungarian on box IoU, a match needs IoU >= 0.5);
printed per clip and N:
  recall     matched faces / reference faces;  extra: faces with no reference match (false positives)
  IoU        mean box IoU of the matched faces (followed ones only in ``IoU fol``)
  NME        mean landmark distance / reference inter-ocular distance (outer eye corners 36-45), %
  kps        mean 5-key-point distance / inter-ocular distance, %
  tracks     number of tracks (reference: in brackets); cuts: frames/shot changes equal to the reference
  det%       share of frames where the detector ran
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
from scipy.optimize import linear_sum_assignment

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import facekit  # noqa: E402
from facekit.face.tracking import iou_matrix  # noqa: E402

STAGES = "track,landmarks"


def run(clip: str, out: Path, every: int) -> dict:
    facekit.extract([clip], out, stages=STAGES, detect_every=every, progress=False)
    with facekit.open(out) as st:
        g = st[next(iter(st))].group
        d = {k: g[f"faces/{k}"][()] for k in ("frame", "box", "kps5", "landmarks", "track")}
        d["source"] = g["faces/source"][()] if "faces/source" in g else np.zeros(len(d["frame"]), np.uint8)
        d["shot"] = g["frames/shot"][()]
        d["n_tracks"] = len(g["tracks/id"])
        d["n_frames"] = len(g["frames/t"])
    return d


def compare(ref: dict, got: dict) -> dict:
    m_iou, m_nme, m_kps, m_fol = [], [], [], []
    matched = extra = 0
    frames_with_faces = set(ref["frame"].tolist()) | set(got["frame"].tolist())
    det_frames = set(got["frame"][got["source"] == 0].tolist())
    for fr in frames_with_faces:
        a = np.flatnonzero(ref["frame"] == fr)
        b = np.flatnonzero(got["frame"] == fr)
        if len(a) and len(b):
            iou = iou_matrix(ref["box"][a], got["box"][b])
            r, c = linear_sum_assignment(-iou)
            ok = iou[r, c] >= 0.5
            r, c = r[ok], c[ok]
        else:
            r = c = np.zeros(0, int)
        matched += len(r)
        extra += len(b) - len(r)
        for i, j in zip(a[r], b[c]):
            io = np.linalg.norm(ref["landmarks"][i, 36] - ref["landmarks"][i, 45])
            m_iou.append(iou_matrix(ref["box"][i], got["box"][j])[0, 0])
            m_nme.append(np.linalg.norm(ref["landmarks"][i] - got["landmarks"][j], axis=1).mean() / io)
            m_kps.append(np.linalg.norm(ref["kps5"][i] - got["kps5"][j], axis=1).mean() / io)
            if got["source"][j]:
                m_fol.append(m_iou[-1])
    n_ref = len(ref["frame"])
    return {"recall": matched / max(n_ref, 1), "extra": extra, "iou": np.mean(m_iou) if m_iou else np.nan,
            "iou_fol": np.mean(m_fol) if m_fol else np.nan, "nme": 100 * np.mean(m_nme) if m_nme else np.nan,
            "nme_p95": 100 * np.percentile(m_nme, 95) if m_nme else np.nan,
            "kps": 100 * np.mean(m_kps) if m_kps else np.nan, "tracks": got["n_tracks"],
            "cuts_same": bool(np.array_equal(ref["shot"], got["shot"])),
            "followed": float(np.mean(got["source"])) if len(got["source"]) else 0.0,
            "n_faces": len(got["frame"]), "n_ref": n_ref}


def main():
    ap = argparse.ArgumentParser()
    data = Path(os.environ.get("FACEKIT_TEST_DATA", "../shared/data"))
    ap.add_argument("clips", nargs="*")
    ap.add_argument("--data", default=str(data))
    ap.add_argument("--every", default="2,3,5")
    args = ap.parse_args()
    v = Path(args.data) / "videos"
    clips = args.clips or ([str(v / "hamilton_multiface.mp4")] + sorted(map(str, (v / "grid").glob("*.mpg")))
                           + sorted(map(str, (v / "videoretalking").glob("*.mp4"))))
    every = [int(x) for x in args.every.split(",")]
    print("| clip | N | recall | extra | IoU | IoU followed | NME % | NME p95 % | kps % | tracks (N=1) | "
          "cuts same | followed |\n|---|---|---|---|---|---|---|---|---|---|---|---|")
    totals = {n: [] for n in every}
    with tempfile.TemporaryDirectory() as tmp:
        for k, clip in enumerate(clips):
            ref = run(clip, Path(tmp) / f"r{k}.h5", 1)
            for n in every:
                c = compare(ref, run(clip, Path(tmp) / f"g{k}_{n}.h5", n))
                totals[n].append(c)
                print(f"| {Path(clip).name} | {n} | {c['recall']:.1%} | {c['extra']} | {c['iou']:.3f} | "
                      f"{c['iou_fol']:.3f} | {c['nme']:.2f} | {c['nme_p95']:.2f} | {c['kps']:.2f} | "
                      f"{c['tracks']} ({ref['n_tracks']}) | {'yes' if c['cuts_same'] else 'NO'} | "
                      f"{c['followed']:.0%} |", flush=True)
    for n, cs in totals.items():
        w = np.array([c["n_ref"] for c in cs], float)
        print(f"N={n}: all clips, face-weighted: recall {np.average([c['recall'] for c in cs], weights=w):.1%}, "
              f"NME {np.nanmean([c['nme'] for c in cs]):.2f} % (mean of clips), IoU "
              f"{np.nanmean([c['iou'] for c in cs]):.3f}, extra faces {sum(c['extra'] for c in cs)}, "
              f"followed {np.average([c['followed'] for c in cs], weights=w):.0%}")


if __name__ == "__main__":
    main()
