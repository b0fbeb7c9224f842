"""Turn command-line inputs into work units (one unit = one video) with store keys.

Inputs may be files, directories (searched recursively), ``@list.txt`` (one path a line, ``#``
comments) or ``-`` (paths on stdin). In a directory, video files are units; so are still images,
and a folder of image frames is one unit when ``frame_folders`` says so (``auto``: its images are
numbered, like Aff-Wild2's ``cropped_aligned/<video>/00001.jpg``). A facekit store (``.h5`` index)
given as input stands for its videos: their sources are read again and stored results reused.

Keys are the unit's path relative to the common root of all inputs (POSIX separators), so the
same dataset gives the same keys wherever it is mounted.
"""

from __future__ import annotations

import os
import re
import sys
import unicodedata
from dataclasses import dataclass
from pathlib import Path

from .media import AUDIO_EXTENSIONS, IMAGE_EXTENSIONS, VIDEO_EXTENSIONS


class InputError(Exception):
    pass


@dataclass
class Unit:
    key: str
    path: str  # absolute path of the source (file or folder of frames)
    kind: str  # "video", "image", "frames"
    size: int = 0  # bytes (sum of frames for a folder), used to schedule the largest first
    reuse_from: str | None = None  # shard file holding earlier results for this video


_NUMBERED = re.compile(r"^\D{0,16}\d+\.\w+$")


def _is_frame_folder(files: list[str], mode: str) -> bool:
    if mode == "yes":
        return True
    if mode == "no":
        return False
    return len(files) >= 2 and all(_NUMBERED.match(f) for f in files)


def _walk(root: Path, frame_folders: str, warnings: list[str], audio: bool = False) -> list[tuple[Path, str]]:
    found: list[tuple[Path, str]] = []
    seen_dirs: set[tuple[int, int]] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        st = os.stat(dirpath)
        ident = (st.st_dev, st.st_ino)
        if ident in seen_dirs:  # symlink loop or a directory reached twice
            warnings.append(f"{dirpath}: directory already visited (symlink loop?); skipped")
            dirnames[:] = []
            continue
        seen_dirs.add(ident)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        files = sorted(f for f in filenames if not f.startswith("."))
        images = [f for f in files if Path(f).suffix.lower() in IMAGE_EXTENSIONS]
        media_ext = VIDEO_EXTENSIONS | AUDIO_EXTENSIONS if audio else VIDEO_EXTENSIONS
        videos = [f for f in files if Path(f).suffix.lower() in media_ext]
        for f in videos:
            found.append((Path(dirpath) / f, "video"))
        if images:
            if _is_frame_folder(images, frame_folders) and Path(dirpath) != root or (
                    Path(dirpath) == root and frame_folders == "yes"):
                found.append((Path(dirpath), "frames"))
            else:
                for f in images:
                    found.append((Path(dirpath) / f, "image"))
    return found


def _read_list(src, base: Path) -> list[str]:
    out = []
    for line in src:
        line = line.strip()
        if line and not line.startswith("#"):
            p = Path(line).expanduser()
            out.append(str(p if p.is_absolute() else base / p))
    return out


def _expand_args(inputs: list[str], stdin=None) -> list[str]:
    paths: list[str] = []
    for arg in inputs:
        if arg == "-":
            paths += _read_list(stdin or sys.stdin, Path.cwd())
        elif arg.startswith("@"):
            lst = Path(arg[1:]).expanduser()
            try:
                with open(lst, encoding="utf-8") as fh:
                    paths += _read_list(fh, lst.parent)
            except OSError as e:
                raise InputError(f"{lst}: cannot read list file ({e.strerror or e})") from e
        else:
            paths.append(arg)
    return paths


def safe_key(key: str) -> str:
    """Normalise a key and refuse ones that could escape a directory.

    Normalising: POSIX separators, no empty or ``.`` parts (so an absolute path becomes relative),
    bytes of a file name that are not UTF-8 (``os.fsdecode``'s surrogates) written as ``\\xNN``,
    Unicode NFC. Refused (InputError): empty keys, NUL, and any part that is ``..``, or that
    under compatibility normalisation (NFKC: fullwidth dots and solidus, one-dot leaders...)
    holds a ``/`` or a ``.``/``..`` between backslashes, so a key joined below a directory stays
    below it on any file system.
    """
    if not isinstance(key, str):
        raise InputError(f"unsafe store key {key!r} (not a string)")
    key = key.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    key = unicodedata.normalize("NFC", key.replace(os.sep, "/"))
    parts = [p for p in key.split("/") if p not in ("", ".")]
    if not parts or "\x00" in key:
        raise InputError(f"unsafe store key {key!r}")
    for p in parts:
        compat = unicodedata.normalize("NFKC", p)
        if p == ".." or "/" in compat or any(q in (".", "..") for q in compat.split("\\")):
            raise InputError(f"unsafe store key {key!r} (part {p!r})")
    return "/".join(parts)


def collect(inputs: list[str], frame_folders: str = "auto", stdin=None, audio: bool = False
            ) -> tuple[list[Unit], list[tuple[str, str]], list[str]]:
    """Expand inputs. Returns (units, problems [(path, cause)], warnings).

    audio: also take audio files (.wav, .flac, ...) found in directories (runs of audio stages only).

    Missing or non-media explicit inputs become problems (they are reported and recorded as
    failures); directories contribute every media file found below them.
    """
    from .store import Store

    problems: list[tuple[str, str]] = []
    warnings: list[str] = []
    # (path, kind, root for the key, shard to reuse results from, key fixed by a store input)
    entries: list[tuple[Path, str, Path, str | None, str | None]] = []
    for raw in _expand_args(list(inputs), stdin):
        p = Path(raw).expanduser()
        ap = Path(os.path.abspath(p))
        if not os.path.lexists(p):
            problems.append((raw, "no such file or directory"))
            continue
        if p.is_dir():
            if frame_folders != "no" and _dir_is_frames(ap, frame_folders):
                entries.append((ap, "frames", ap.parent, None, None))
                continue
            for f, kind in _walk(ap, frame_folders, warnings, audio):
                entries.append((Path(os.path.abspath(f)), kind, ap, None, None))
            continue
        ext = p.suffix.lower()
        if ext == ".h5":
            try:
                st = Store(ap)
                for row in st.rows():
                    v = st[row.key]
                    src = v.attrs.get("source_path")
                    if src:
                        entries.append((Path(src), v.attrs.get("source_kind", "video"), Path(src).parent,
                                        str(st.shard_path(row)), row.key))
                st.close()
            except Exception as e:  # noqa: BLE001
                problems.append((raw, f"not a readable facekit store ({e})"))
            continue
        kind = "image" if ext in IMAGE_EXTENSIONS else "video"
        entries.append((ap, kind, ap.parent, None, None))

    if not entries:
        return [], problems, warnings
    # the common root: the directory inputs themselves, the parents of file inputs
    roots = {str(e[2]) for e in entries if e[4] is None} or {"/"}
    common = Path(os.path.commonpath(list(roots))) if len(roots) > 1 else Path(next(iter(roots)))
    units: list[Unit] = []
    seen_paths: set[str] = set()
    seen_keys: dict[str, str] = {}
    for path, kind, _root, reuse, fixed_key in entries:
        real = os.path.realpath(path)
        if real in seen_paths:
            continue  # the same file given twice
        seen_paths.add(real)
        try:
            key = safe_key(fixed_key or os.path.relpath(path, common))
        except (InputError, ValueError) as e:
            problems.append((str(path), str(e)))
            continue
        if key in seen_keys:
            other = seen_keys[key]
            why = " (the names differ only in Unicode normalisation)" if (
                unicodedata.normalize("NFC", str(path)) == unicodedata.normalize("NFC", other)) else ""
            problems.append((str(path), f"maps to the same store key {key!r} as {other}{why}"))
            continue
        seen_keys[key] = str(path)
        try:
            size = os.path.getsize(path) if kind != "frames" else sum(
                os.path.getsize(path / f) for f in os.listdir(path))
        except OSError:
            size = 0
        units.append(Unit(key=key, path=str(path), kind=kind, size=size, reuse_from=reuse))
    # a key that is a folder of another key (frames folder "a" holding a video "a/b.mp4") cannot be
    # stored: HDF5 groups nest
    keys = {u.key for u in units}
    clash = {u.key for u in units if any(u.key.startswith(k + "/") for k in keys if k != u.key)}
    for u in [u for u in units if u.key in clash]:
        problems.append((u.path, f"store key {u.key!r} lies inside the key of another input (a frame folder?)"))
    units = [u for u in units if u.key not in clash]
    units.sort(key=lambda u: u.key)
    return units, problems, warnings


def _dir_is_frames(d: Path, mode: str) -> bool:
    """A directory given directly is one frames-unit when it holds only (numbered) images."""
    try:
        names = [n for n in os.listdir(d) if not n.startswith(".")]
    except OSError:
        return False
    if any((d / n).is_dir() for n in names):
        return False
    images = [n for n in names if Path(n).suffix.lower() in IMAGE_EXTENSIONS]
    videos = [n for n in names if Path(n).suffix.lower() in VIDEO_EXTENSIONS]
    if videos or not images:
        return False
    return _is_frame_folder(sorted(images), mode)


def select_shard(units: list[Unit], shard: str | None) -> list[Unit]:
    """The ``I/N`` slice (1-based) of the key-sorted units: every N-th starting at I."""
    if not shard:
        return units
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", shard)
    if not m or not (1 <= int(m.group(1)) <= int(m.group(2))):
        raise InputError(f"--shard {shard!r}: expected I/N with 1 <= I <= N, e.g. 3/8")
    i, n = int(m.group(1)), int(m.group(2))
    return [u for j, u in enumerate(sorted(units, key=lambda u: u.key)) if j % n == i - 1]
