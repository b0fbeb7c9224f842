"""facekit preview: contact sheets and annotated videos."""

from __future__ import annotations

import av
import cv2
import numpy as np

import facekit
from click.testing import CliRunner
from facekit.cli import main
from facekit.preview import _colour, draw


def test_draw_marks_box_and_points():
    img = np.zeros((120, 160, 3), np.uint8)
    faces = {"box": np.array([[20, 20, 80, 90]], np.float32), "score": np.array([0.9], np.float32),
             "kps5": np.array([[[40, 40], [60, 40], [50, 55], [42, 70], [58, 70]]], np.float32),
             "track": np.array([3])}
    out = draw(img, faces, t_sec=1.5)
    assert img.sum() == 0  # the input is not modified
    assert np.abs(out[19:22, 50].astype(int) - _colour(3)).sum(axis=1).min() < 60  # box edge, track colour
    assert out[40, 40].sum() > 0 and out[70, 58].sum() > 0  # key points drawn


def test_preview_sheet_and_video(clips, tmp_path):
    r = CliRunner().invoke(main, ["preview", str(clips["face"]), "-o", str(tmp_path / "s.png"), "--frames", "6",
                                  "--columns", "3"])
    assert r.exit_code == 0, r.output
    sheet = cv2.imread(str(tmp_path / "s.png"))
    assert sheet.shape[1] == 3 * 480 and sheet.shape[0] == 2 * 360  # 6 tiles of 480x360 (320x240 scaled)
    out = tmp_path / "feats.h5"
    facekit.extract([str(clips["face"])], out, progress=False, stages="detect")
    r = CliRunner().invoke(main, ["preview", str(clips["face"]), "--from", str(out), "-o", str(tmp_path / "v.mp4")])
    assert r.exit_code == 0, r.output
    with av.open(str(tmp_path / "v.mp4")) as c:
        ts = [f.time for f in c.decode(video=0)]
    assert len(ts) == 20 and abs(ts[1] - ts[0] - 0.04) < 1e-3  # every frame, original timing


def test_preview_of_a_video_not_in_the_store(clips, tmp_path):
    out = tmp_path / "feats.h5"
    facekit.extract([str(clips["face"])], out, progress=False, stages="detect")
    r = CliRunner().invoke(main, ["preview", str(clips["silent"]), "--from", str(out), "-o", str(tmp_path / "x.png")])
    assert r.exit_code == 1 and "not in store" in r.output
