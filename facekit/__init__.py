"""facekit: face videos -> time-aligned features (faces, landmarks, crops, audio) in HDF5.

The Python API mirrors the command line::

    import facekit
    summary = facekit.extract(["videos/"], "feats.h5", stages="detect,mel", fps=10)
    with facekit.open("feats.h5") as st:
        v = st.videos["clip.mp4"]
        v.frames.t, v.faces.box, v.audio["mel"].data
        mel_per_frame, t = v.stream("mel", clock="video", method="mean")
    facekit.export("feats.h5", "feats/", format="npy", clock="video")   # `facekit export`

See docs/ for the store layout and every command.
"""

from .version import SCHEMA_VERSION, __version__
from .store import open, Store, Video, StoreError  # noqa: A004 - facekit.open is the reader
from .engine import extract, Summary, Result
from .media import MediaError, probe, iter_frames, read_audio
from .config import Config
from . import stages, zoo
from .verify import verify  # noqa: E402 - facekit.verify(path) -> report dict (`facekit verify`)
from . import clock  # noqa: E402 - facekit.clock.resample: streams onto another clock
from .export import export  # noqa: E402 - facekit.export(store, to, ...) (`facekit export`)

__all__ = ["__version__", "SCHEMA_VERSION", "open", "Store", "Video", "StoreError", "extract", "Summary",
           "Result", "MediaError", "probe", "iter_frames", "read_audio", "Config", "zoo", "info", "verify",
           "clock", "export"]


def info(path) -> dict:
    """Summary of a store as a dict (what ``facekit info --json`` prints)."""
    from .report import store_info

    return store_info(path)
