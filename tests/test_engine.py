"""End-to-end runs of the engine through the Python API: results, resume, failures, reuse."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

import facekit
from facekit import store


def test_extract_generated_clips(clips, tmp_path):
    out = tmp_path / "feats.h5"
    s = facekit.extract([str(clips["face"]), str(clips["face2"])], out, progress=False)
    assert s.ok and len(s.processed) == 2, s.to_dict()
    with facekit.open(out) as st:
        assert sorted(st) == ["face.mp4", "sub/face2.mkv"]
        v = st.videos["face.mp4"]
        assert v.status == "done"
        assert len(v.frames) == 20
        np.testing.assert_allclose(v.frames.t, np.arange(20) / 25, atol=1e-6)
        assert v.faces.per_frame_counts().tolist() == [1] * 20  # exactly one face in every frame
        box = v.faces.box
        assert box.shape == (20, 4) and box.dtype == np.float32
        assert v.faces.kps5.shape == (20, 5, 2)
        assert (v.faces.score >= 0.8).all()
        # the face sits inside the 320x240 frame and the eyes are inside the box
        assert (box[:, 0] >= -5).all() and (box[:, 2] <= 325).all()
        k = v.faces.kps5
        assert ((k[:, :, 0] >= box[:, None, 0]) & (k[:, :, 0] <= box[:, None, 2])).all()
        mel = v.audio["mel"]
        assert mel.data.shape[1] == 80 and mel.data.dtype == np.float32
        assert mel.attrs["hop"] == 160 and mel.attrs["sample_rate"] == 16000
        np.testing.assert_allclose(np.diff(mel.t), 0.01, atol=1e-9)
        assert abs(mel.t[-1] - 0.8) < 0.05  # 20 frames at 25 fps = 0.8 s of audio
        assert v.faces.attrs("box")["weights_sha256"] == facekit.zoo.get("yunet").files[0].sha256
        assert v.attrs["stage_params"]["detect"]["detector"] == "yunet"
        assert st.attrs["schema_version"] == facekit.SCHEMA_VERSION


def test_resume_skips_finished_and_overwrite_recomputes(clips, tmp_path):
    out = tmp_path / "feats.h5"
    s1 = facekit.extract([str(clips["face"])], out, progress=False, stages="detect")
    assert len(s1.processed) == 1
    shard = store.shards_dir(out) / store.shard_name("face.mp4")
    mtime = shard.stat().st_mtime_ns
    s2 = facekit.extract([str(clips["face"])], out, progress=False, stages="detect")
    assert len(s2.skipped) == 1 and shard.stat().st_mtime_ns == mtime
    s3 = facekit.extract([str(clips["face"])], out, progress=False, stages="detect", overwrite=True)
    assert len(s3.processed) == 1
    # changing a parameter of a stage recomputes
    s4 = facekit.extract([str(clips["face"])], out, progress=False, stages="detect", det_threshold=0.7)
    assert len(s4.processed) == 1


def test_new_stage_reuses_stored_detections(clips, tmp_path):
    out = tmp_path / "feats.h5"
    facekit.extract([str(clips["face"])], out, progress=False, stages="detect")
    with facekit.open(out) as st:
        boxes = st.videos["face.mp4"].faces.box
    s = facekit.extract([str(clips["face"])], out, progress=False, stages="detect,mel")
    assert len(s.processed) == 1
    with facekit.open(out) as st:
        v = st.videos["face.mp4"]
        assert v.attrs["reused_stages"] == ["detect"]
        np.testing.assert_array_equal(v.faces.box, boxes)
        assert len(v.frames) == 20 and "mel" in v.audio


def test_store_as_input_reuses_results(clips, tmp_path):
    a = tmp_path / "a.h5"
    facekit.extract([str(clips["face"])], a, progress=False, stages="detect")
    b = tmp_path / "b.h5"
    s = facekit.extract([str(a)], b, progress=False, stages="detect,mel")
    assert s.ok and len(s.processed) == 1
    with facekit.open(b) as st:
        v = st.videos["face.mp4"]
        assert v.attrs["reused_stages"] == ["detect"] and "mel" in v.audio


def test_bad_inputs_are_recorded_and_run_continues(clips, bad_files, tmp_path):
    out = tmp_path / "feats.h5"
    inputs = [str(clips["face"])] + [str(p) for p in bad_files.values()] + [str(tmp_path / "missing.mp4")]
    s = facekit.extract(inputs, out, progress=False)
    assert not s.ok
    assert len(s.processed) == 1 and len(s.failed) == 4
    for r in s.failed:
        assert "\n" not in r.error and r.error
    causes = {r.path.rsplit("/", 1)[-1]: r.error for r in s.failed}
    assert "empty" in causes["zero.mp4"]
    assert "no such file" in causes["missing.mp4"]
    with facekit.open(out) as st:
        statuses = {k: st[k].status for k in st}
        assert statuses["clips0/face.mp4"] == "done"  # keys are relative to the inputs' common root
        assert sum(v == "failed" for v in statuses.values()) == 4
        failed = [st[k] for k in st if st[k].status == "failed"]
        assert all(v.error for v in failed)
    # failed videos are retried on the next run, finished ones skipped
    s2 = facekit.extract(inputs, out, progress=False)
    assert len(s2.skipped) == 1 and len(s2.failed) == 4


def test_silent_video_finishes_with_no_audio(clips, tmp_path):
    out = tmp_path / "feats.h5"
    s = facekit.extract([str(clips["silent"])], out, progress=False)
    assert s.ok, s.to_dict()
    with facekit.open(out) as st:
        mel = st.videos["silent.mp4"].audio["mel"]
        assert mel.data.shape == (0, 80) and mel.attrs["audio_status"] == "no audio"


def test_workers_give_identical_results(clips, tmp_path, monkeypatch):
    inputs = [str(clips["face"]), str(clips["face2"]), str(clips["silent"])]
    one, two = tmp_path / "one.h5", tmp_path / "two.h5"
    monkeypatch.setenv("FACEKIT_THREADS", "4")
    facekit.extract(inputs, one, progress=False, stages="detect,mel")
    s = facekit.extract(inputs, two, progress=False, stages="detect,mel", workers=2)
    assert s.ok and len(s.processed) == 3
    with facekit.open(one) as a, facekit.open(two) as b:
        assert list(a) == list(b)
        for k in a:
            # each of the 2 workers computed with half of the run's 4 threads
            assert (a[k].attrs["cpu_threads"], b[k].attrs["cpu_threads"]) == (4, 2)
            np.testing.assert_array_equal(a[k].frames.t, b[k].frames.t)
            np.testing.assert_array_equal(a[k].faces.box, b[k].faces.box)
            np.testing.assert_array_equal(a[k].audio["mel"].data, b[k].audio["mel"].data)


def test_shard_selection_partitions_inputs(clips, tmp_path):
    inputs = [str(clips["face"]), str(clips["face2"]), str(clips["silent"])]
    out = tmp_path / "feats.h5"
    keys = []
    for i in (1, 2):
        s = facekit.extract(inputs, out, progress=False, stages="mel", shard=f"{i}/2")
        keys += [r.key for r in s.results]
    assert sorted(keys) == ["face.mp4", "silent.mp4", "sub/face2.mkv"]
    with facekit.open(out) as st:
        assert len(st) == 3


def test_index_is_plain_hdf5_with_external_links(clips, tmp_path, monkeypatch):
    out = tmp_path / "feats.h5"
    facekit.extract([str(clips["face"])], out, progress=False, stages="detect")
    monkeypatch.chdir("/")
    with h5py.File(out, "r") as f:
        assert f.attrs["schema_version"] == facekit.SCHEMA_VERSION
        assert f["videos/face.mp4/faces/box"].shape == (20, 4)
        assert f["index/key"].asstr()[()].tolist() == ["face.mp4"]


def test_unknown_and_unavailable_stages_fail_before_work(clips, tmp_path, monkeypatch):
    facekit.stages.load_builtin()
    with monkeypatch.context() as m:
        m.delitem(facekit.stages.REGISTRY, "vggish")  # a DESIGN stage this build would lack
        with pytest.raises(facekit.stages.StageError, match="not available"):
            facekit.extract([str(clips["face"])], tmp_path / "x.h5", stages="vggish")
    with pytest.raises((facekit.stages.StageError, facekit.zoo.ModelError), match="models pull vggish"):
        facekit.extract([str(clips["face"])], tmp_path / "x.h5", stages="vggish")
    with pytest.raises(facekit.stages.StageError, match="unknown stage"):
        facekit.extract([str(clips["face"])], tmp_path / "x.h5", stages="nope")


def test_landmarks_stage_adds_detect_and_lands_on_the_face(clips, tmp_path):
    out = tmp_path / "feats.h5"
    s = facekit.extract([str(clips["face"])], out, progress=False, stages="landmarks")
    assert s.ok
    with facekit.open(out) as st:
        v = st["face.mp4"]
        assert v.attrs["stages"] == ["detect", "landmarks"]  # prerequisites added
        lm, box, kps = v.faces.landmarks, v.faces.box, v.faces.kps5
        assert lm.shape == (20, 68, 2) and v.faces.attrs("landmarks")["scheme"] == "ibug68"
        # eye centres of the 68 points agree with the detector's eye key points (a few pixels)
        right_eye, left_eye = lm[:, 36:42].mean(1), lm[:, 42:48].mean(1)
        io = np.linalg.norm(kps[:, 0] - kps[:, 1], axis=1)
        assert (np.linalg.norm(right_eye - kps[:, 0], axis=1) < 0.25 * io).all()
        assert (np.linalg.norm(left_eye - kps[:, 1], axis=1) < 0.25 * io).all()
        # with --max-side the stored points stay in source pixels
    out2 = tmp_path / "small.h5"
    facekit.extract([str(clips["face"])], out2, progress=False, stages="landmarks", max_side=160)
    with facekit.open(out2) as st:
        lm2 = st["face.mp4"].faces.landmarks
        assert np.abs(lm2.mean(1) - lm.mean(1)).max() < 6  # same place, coarser image


def test_crop_align_pose_stages(clips, tmp_path):
    from facekit.face import align

    out = tmp_path / "feats.h5"
    imgs = tmp_path / "crops"
    s = facekit.extract([str(clips["face"])], out, progress=False, stages="crop,pose", images=str(imgs),
                        image_format="png")
    assert s.ok, s.to_dict()
    with facekit.open(out) as st:
        v = st["face.mp4"]
        f = v.faces
        assert f.crop.shape == (20, 112, 112, 3) and f.crop.dtype == np.uint8
        assert f.affine.shape == (20, 2, 3) and f.attrs("affine")["direction"] == "crop -> image"
        assert v.group["faces/crop"].compression == "gzip" and v.group["faces/crop"].compression_opts == 1  # crop.CROP_GZIP
        # the eyes of every crop land on the ArcFace template's eyes within 2 px
        to_crop = align.invert_affine(f.affine.astype(np.float64))
        eyes = align.transform_points(to_crop, f.kps5[:, :2].astype(np.float64))
        # (the 5-point least-squares fit leaves ~2.5 px on this synthetic face; < 1 px on GRID, see
        # test_realdata)
        assert np.linalg.norm(eyes - align.ARCFACE_112[:2], axis=2).max() < 4.0
        assert f.pose.shape == (20, 3) and np.isfinite(f.pose).all()
        assert np.abs(f.pose[:, 0]).max() < 25  # a frontal face: small yaw
        # crops written as images too, identical to the stored ones
        files = sorted((imgs / "face.mp4").rglob("*.png"))
        assert len(files) == 20 and files[0].parent.name == "faces"  # no track stage: one folder
        import cv2

        first = cv2.cvtColor(cv2.imread(str(files[0])), cv2.COLOR_BGR2RGB)
        np.testing.assert_array_equal(first, f.crop[0])


def test_reuse_replays_stored_detections_for_new_frame_stages(clips, tmp_path):
    out = tmp_path / "feats.h5"
    facekit.extract([str(clips["face"])], out, progress=False, stages="detect")
    s = facekit.extract([str(clips["face"])], out, progress=False, stages="align,pose")
    assert s.ok
    ref = tmp_path / "ref.h5"
    facekit.extract([str(clips["face"])], ref, progress=False, stages="align,pose")
    with facekit.open(out) as a, facekit.open(ref) as b:
        va, vb = a["face.mp4"], b["face.mp4"]
        assert va.attrs["reused_stages"] == ["detect"]
        for name in ("frame", "box", "kps5", "landmarks", "affine", "pose"):
            np.testing.assert_array_equal(va.faces[name], vb.faces[name])


def test_ffhq_template_from_landmarks(clips, tmp_path):
    out = tmp_path / "feats.h5"
    s = facekit.extract([str(clips["face"])], out, progress=False, stages="crop", align_template="ffhq",
                        crop_size=128)
    assert s.ok
    with facekit.open(out) as st:
        f = st["face.mp4"].faces
        assert f.crop.shape == (20, 128, 128, 3)
        assert f.attrs("affine")["template"] == "ffhq"
        assert f.crop[:, 40:90, 40:90].mean() > 40  # the face fills the middle of the crop


def test_track_and_primary_selection(tmp_path):
    import mediagen

    # two faces: a big one in the middle for the whole clip, a small one in a corner
    frames = []
    for i in range(15):
        big = mediagen.face_image(size=(320, 240), offset=(i, 0))
        small = mediagen.face_image(size=(100, 80), background="plain")
        img = big.copy()
        img[0:80, 0:100] = small
        frames.append(img)
    clip = mediagen.face_video(tmp_path / "two.mp4", n_frames=15, frames=frames, audio=None)
    out = tmp_path / "all.h5"
    s = facekit.extract([str(clip)], out, progress=False, stages="track", det_threshold=0.6)
    assert s.ok
    with facekit.open(out) as st:
        v = st["two.mp4"]
        t = v.group["tracks"]
        assert len(t["id"]) == 2 and t["primary"][()].sum() == 1
        assert v.faces.track.shape == (len(v.faces),) and set(v.faces.track) == {0, 1}
        big_track = int(t["id"][()][t["primary"][()] == 1][0])
        assert (v.group["frames/shot"][()] == 0).all()
        n_all = len(v.faces)
    out2 = tmp_path / "primary.h5"
    s = facekit.extract([str(clip)], out2, progress=False, stages="crop", det_threshold=0.6, primary=True,
                        images=str(tmp_path / "img"))
    assert s.ok
    with facekit.open(out2) as st:
        v = st["two.mp4"]
        assert len(v.faces) == 15 < n_all and set(v.faces.track) == {big_track}
        assert v.faces.crop.shape[0] == 15 and v.faces.landmarks.shape[0] == 15
        assert v.attrs["faces_filtered"]["kept_tracks"] == [big_track]
        assert v.group["tracks/kept"][()].tolist().count(1) == 1
    dirs = sorted(p.name for p in (tmp_path / "img" / "two.mp4").iterdir())
    assert dirs == [f"track{big_track:04d}"]


def test_track_videos(clips, tmp_path):
    import av

    d = tmp_path / "out"
    s = facekit.extract([str(clips["face"])], tmp_path / "f.h5", progress=False, stages="crop", images=str(d),
                        track_videos=True, write_images=False, crops_in_store=False)
    assert s.ok, s.to_dict()
    vids = sorted((d / "face.mp4").glob("*.mp4"))
    assert [v.name for v in vids] == ["track0000.mp4"]
    assert not list((d / "face.mp4").rglob("*.jpg"))  # --no-image-files
    with av.open(str(vids[0])) as c:
        frames = [(f.time, f.width, f.height) for f in c.decode(video=0)]
    assert len(frames) == 20 and frames[0][1:] == (112, 112)
    assert abs(frames[1][0] - frames[0][0] - 0.04) < 2e-3
    with facekit.open(tmp_path / "f.h5") as st:
        assert "crop" not in st["face.mp4"].faces.keys()


def test_video_without_faces_finishes_with_empty_arrays(tmp_path):
    import mediagen

    frames = [np.zeros((240, 320, 3), np.uint8)] * 5 + [np.full((240, 320, 3), 90, np.uint8)] * 5
    clip = mediagen.face_video(tmp_path / "noface.mp4", n_frames=10, frames=frames, audio="tone")
    out = tmp_path / "f.h5"
    s = facekit.extract([str(clip)], out, progress=False, stages="detect,track,landmarks,align,pose,crop,mel")
    assert s.ok, s.to_dict()
    with facekit.open(out) as st:
        v = st["noface.mp4"]
        assert v.status == "done" and len(v.frames) == 10 and len(v.faces) == 0
        f = v.faces
        assert f.box.shape == (0, 4) and f.kps5.shape == (0, 5, 2) and f.landmarks.shape == (0, 68, 2)
        assert f.affine.shape == (0, 2, 3) and f.pose.shape == (0, 3) and f.crop.shape == (0, 112, 112, 3)
        assert f.track.shape == (0,) and len(v.group["tracks/id"]) == 0
        assert v.faces.per_frame_counts().tolist() == [0] * 10
        assert v.audio["mel"].data.shape[0] > 0


def test_other_stages_are_kept_when_a_run_asks_for_fewer(clips, tmp_path):
    """extract then crop: pose and mel stored by the first run stay (their inputs are unchanged)."""
    out = tmp_path / "f.h5"
    facekit.extract([str(clips["face"])], out, progress=False, stages="align,pose,mel")
    s = facekit.extract([str(clips["face"])], out, progress=False, stages="crop")
    assert s.ok and len(s.processed) == 1
    with facekit.open(out) as st:
        v = st["face.mp4"]
        assert {"pose", "mel", "crop"} <= set(v.attrs["stages"])
        assert v.faces.pose.shape == (20, 3) and v.faces.crop.shape[0] == 20 and "mel" in v.audio
    # an audio-only run keeps every face stage and the frames
    facekit.extract([str(clips["face"])], out, progress=False, stages="mel", mel_n_mels=40)
    with facekit.open(out) as st:
        v = st["face.mp4"]
        assert v.audio["mel"].data.shape[1] == 40 and len(v.frames) == 20 and v.faces.crop.shape[0] == 20
    # a detection change invalidates the face stages that are not recomputed
    facekit.extract([str(clips["face"])], out, progress=False, stages="detect", det_threshold=0.7)
    with facekit.open(out) as st:
        v = st["face.mp4"]
        assert "pose" not in v.attrs["stages"] and "landmarks" not in v.faces.keys() and "mel" in v.audio


def test_failed_rerun_keeps_finished_results(clips, tmp_path):
    import shutil

    src = tmp_path / "c.mp4"
    shutil.copy(clips["face"], src)
    out = tmp_path / "f.h5"
    facekit.extract([str(src)], out, progress=False, stages="detect")
    src.write_text("junk")
    s = facekit.extract([str(src)], out, progress=False, stages="detect,mel")
    assert len(s.failed) == 1 and "kept" in s.failed[0].error
    with facekit.open(out) as st:
        assert st["c.mp4"].status == "done" and len(st["c.mp4"].faces) == 20


def test_filtered_store_is_not_skipped_for_an_unfiltered_run(clips, tmp_path):
    out = tmp_path / "f.h5"
    facekit.extract([str(clips["face"])], out, progress=False, stages="detect", primary=True)
    s = facekit.extract([str(clips["face"])], out, progress=False, stages="detect")
    assert len(s.processed) == 1  # not skipped: the stored faces were a selection
    with facekit.open(out) as st:
        assert not st["face.mp4"].attrs["faces_filtered"]


def test_store_input_is_not_reused_for_a_changed_source(clips, tmp_path):
    import shutil

    src = tmp_path / "clip.mp4"
    shutil.copy(clips["face"], src)
    a = tmp_path / "a.h5"
    facekit.extract([str(src)], a, progress=False, stages="detect")
    shutil.copy(clips["face2"], src)  # another video at the same path
    s = facekit.extract([str(a)], tmp_path / "b.h5", progress=False, stages="detect,mel")
    assert s.ok
    with facekit.open(tmp_path / "b.h5") as st:
        v = st["clip.mp4"]
        assert v.attrs["reused_stages"] == [] and len(v.frames) == 12


@pytest.mark.parametrize("every", [1, 3])
def test_stages_run_ahead_give_the_same_store(clips, tmp_path, monkeypatch, every):
    """Detection (or keyframes and following) and dlib68 landmarks run one batch ahead in
    background threads (Stage.prepare); the store is the same as when every stage runs in order in
    one thread, at any batch size."""
    from facekit.face import detect, landmarks

    st = "detect,track,landmarks,align,pose,crop"
    inputs = [str(clips["face"]), str(clips["face2"])]
    kw = dict(stages=st, progress=False, detect_every=every)
    a = facekit.extract(inputs, tmp_path / "a.h5", batch_size=4, **kw)
    seen, keyframes = [], []
    real, real_key = detect.DetectStage.prepare, detect.DetectStage._prepare_keyframes
    monkeypatch.setattr(detect.DetectStage, "prepare", lambda self, b: seen.append(1) or real(self, b))
    monkeypatch.setattr(detect.DetectStage, "_prepare_keyframes",
                        lambda self, b: keyframes.append(1) or real_key(self, b))
    c = facekit.extract(inputs, tmp_path / "c.h5", batch_size=7, **kw)
    assert seen  # detection did run ahead
    assert bool(keyframes) == (every > 1)  # with keyframes: cuts and grid detections in a thread of their own
    monkeypatch.setattr(detect.DetectStage, "prepare_steps", lambda self: [])
    monkeypatch.setattr(landmarks.LandmarksStage, "prepare_steps", lambda self: [])
    b = facekit.extract(inputs, tmp_path / "b.h5", **kw)
    assert a.ok and b.ok and c.ok
    with facekit.open(tmp_path / "a.h5") as A, facekit.open(tmp_path / "b.h5") as B, \
            facekit.open(tmp_path / "c.h5") as C:
        for r in a.results:
            fa, fb, fc = A[r.key].faces, B[r.key].faces, C[r.key].faces
            assert len(fa["frame"]) > 0
            for k in ("frame", "box", "kps5", "landmarks", "affine", "crop", "track"):
                assert np.array_equal(fa[k], fb[k]) and np.array_equal(fa[k], fc[k]), k
            shots = [S[r.key].group["frames/shot"][()] for S in (A, B, C)]
            assert np.array_equal(shots[0], shots[1]) and np.array_equal(shots[0], shots[2])
