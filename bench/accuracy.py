"""All accuracy figures of docs/accuracy.md, measured on shared/data through facekit's own stages.

    python bench/accuracy.py [--data ../shared/data] > accuracy.txt

1. detection recall (IoU >= 0.4) on the 43 labelled PASCAL faces, false detections on dogs.jpg;
2. 68-point landmark NME (inter-ocular) on 300-W / 300W-LP / WFLW faces (bench/landmark_accuracy.py);
3. single-face clips (GRID, VideoReTalking): frames with exactly one face, tracks per clip;
4. hamilton: scene cuts found, tracks, tracks spanning a cut, the primary track;
5. aligned crops: distance of the crop's eyes to the ArcFace template's eyes (GRID).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import facekit  # noqa: E402
from facekit.face import align  # noqa: E402


def detection(data: Path) -> None:
    import detect_accuracy as da
    from facekit.config import Config
    from facekit.face.detect import DetectStage
    from facekit.media import _read_image

    d = data / "landmarks" / "dlib_pascal"
    gt = da.load_boxes(d)
    stage = DetectStage(Config())
    hit = n = 0
    for f, boxes in gt.items():
        pred, _ = da.detect(stage, _read_image(str(d / f)))
        hit += sum(any(da.iou(g, p) >= 0.4 for p in pred) for g in boxes)
        n += len(boxes)
    fp = len(da.detect(stage, _read_image(str(d / "dogs.jpg")))[0])
    print(f"detection (yunet, threshold 0.8, det_size 1920): recall {hit}/{n} = {hit / n:.1%}; "
          f"false detections on dogs.jpg: {fp}")


def landmarks(data: Path) -> None:
    import landmark_accuracy as la

    rows = la.evaluate(data)
    raw = la.evaluate(data, use_kps=False)
    print("\nlandmarks (dlib68), NME in % of the outer-eye-corner distance:")
    print(f"| face | NME (box from kps5) | NME (raw detector box) |\n|---|---|---|")
    for (name, e, _), (_, e2, _) in zip(rows, raw):
        print(f"| {name} | {100 * e:.2f} | {100 * e2:.2f} |")
    errs, errs2 = [e for _, e, _ in rows], [e for _, e, _ in raw]
    e300 = [e for n, e, _ in rows if n.startswith("300w/")]
    print(f"| **mean (all {len(errs)})** | **{100 * np.mean(errs):.2f}** | {100 * np.mean(errs2):.2f} |")
    print(f"| mean 300-W | {100 * np.mean(e300):.2f} | |")


def clips(data: Path, tmp: Path) -> None:
    print("\nsingle-face clips (default stages):")
    print("| clip | frames | frames with exactly 1 face | tracks | frames in the longest track |\n|---|---|---|---|---|")
    out = tmp / "single.h5"
    facekit.extract([str(data / "videos" / "grid"), str(data / "videos" / "videoretalking")], out,
                    stages="track", progress=False)
    with facekit.open(out) as st:
        for key in st:
            v = st[key]
            n = len(v.frames)
            one = (v.faces.per_frame_counts() == 1).mean()
            tr = v.group["tracks"]
            print(f"| {key} | {n} | {one:.1%} | {len(tr['id'])} | {tr['n_frames'][()].max() / n:.1%} |")


def hamilton(data: Path, tmp: Path) -> None:
    out = tmp / "h.h5"
    facekit.extract([str(data / "videos" / "hamilton_multiface.mp4")], out, stages="track", progress=False)
    with facekit.open(out) as st:
        v = st["hamilton_multiface.mp4"]
        shot = v.group["frames/shot"][()]
        tr = v.group["tracks"]
        span = sum(shot[a] != shot[b] for a, b in zip(tr["first_frame"][()], tr["last_frame"][()]))
        p = int(np.flatnonzero(tr["primary"][()])[0])
        print(f"\nhamilton: cuts detected at frames {(np.flatnonzero(np.diff(shot)) + 1).tolist()}; "
              f"{len(tr['id'])} tracks, {span} spanning a cut; primary track {p}: frames "
              f"{tr['first_frame'][p]}-{tr['last_frame'][p]} ({tr['n_frames'][p]} detections)")


def crops(data: Path, tmp: Path) -> None:
    out = tmp / "crops.h5"
    facekit.extract([str(data / "videos" / "grid")], out, stages="align", progress=False)
    d = []
    with facekit.open(out) as st:
        for key in st:
            f = st[key].faces
            eyes = align.transform_points(align.invert_affine(f.affine.astype(np.float64)),
                                          f.kps5[:, :2].astype(np.float64))
            d.append(np.linalg.norm(eyes - align.ARCFACE_112[:2], axis=2).ravel())
    d = np.concatenate(d)
    print(f"\naligned crops (arcface 112, GRID, {len(d) // 2} faces): eye-to-template distance mean "
          f"{d.mean():.2f} px, 95th percentile {np.percentile(d, 95):.2f} px, max {d.max():.2f} px")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=os.environ.get("FACEKIT_TEST_DATA", "../shared/data"))
    data = Path(ap.parse_args().data)
    detection(data)
    landmarks(data)
    with tempfile.TemporaryDirectory() as tmp:
        clips(data, Path(tmp))
        hamilton(data, Path(tmp))
        crops(data, Path(tmp))


if __name__ == "__main__":
    main()
