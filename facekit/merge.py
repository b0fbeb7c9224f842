"""``facekit merge``: join stores written separately (job arrays on node-local disks, other machines).

Jobs that share a file system need no merge: every ``--shard I/N`` job writes its own shard files
into the one ``OUT.h5.d/`` and rebuilds the index under a lock. Jobs that wrote separate stores
(``/scratch/job7/feats.h5``) are joined with ``facekit merge SRC.h5... -o OUT.h5``: each finished
or failed video's shard file is copied (temporary name, fsync, atomic rename) into ``OUT.h5.d/``,
then the index is rebuilt. ``facekit merge -o OUT.h5`` with no source rebuilds the index alone.

A video (a key) present in both places is resolved as follows:

=================  ==============  ==========================================================
in OUT             in the source   result
=================  ==============  ==========================================================
absent             any             copied
failed             done            copied (a finished result replaces a failure)
done               failed          kept (a failure never replaces a finished result)
failed             failed          kept
done               done            identical files: kept; different: a **conflict**, kept and
                                   reported (exit code 1), or replaced with ``--overwrite``
=================  ==============  ==========================================================
"""

from __future__ import annotations

import filecmp
import os
import secrets
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from . import store


class MergeError(Exception):
    """The merge cannot start (a source is not a store, the output is not writable)."""


@dataclass
class MergeReport:
    out: str
    copied: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)  # already there and equal, or a failure not copied over a result
    conflicts: list[str] = field(default_factory=list)
    replaced: list[str] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)  # source shard files that could not be read
    videos: int = 0

    @property
    def ok(self) -> bool:
        return not self.conflicts and not self.unreadable

    def to_dict(self) -> dict:
        return {"out": self.out, "ok": self.ok, "videos": self.videos, "copied": self.copied, "kept": self.kept,
                "conflicts": self.conflicts, "replaced": self.replaced, "unreadable": self.unreadable}


def _copy_shard(src: Path, dest_dir: Path, name: str) -> None:
    tmp = dest_dir / f".{name}.{store._host()}.{os.getpid()}.{secrets.token_hex(4)}{store.TMP_SUFFIX}"
    try:
        shutil.copyfile(src, tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, dest_dir / name)
    finally:
        if tmp.exists():
            tmp.unlink()
    store._fsync_dir(dest_dir)


def merge(sources, out, overwrite: bool = False) -> MergeReport:
    """Copy the videos of the stores ``sources`` into the store ``out`` and rebuild its index.

    Returns a MergeReport; raises MergeError before copying anything when a source is not a store.
    """
    out = Path(out)
    srcs = [Path(s) for s in sources]
    dirs = []
    for s in srcs:
        if s.is_dir() and not s.name.endswith(".d"):
            raise MergeError(f"{s}: not a facekit store (give its index file OUT.h5 or its directory OUT.h5.d)")
        d = s if s.is_dir() else store.shards_dir(s)
        if not d.is_dir():
            raise MergeError(f"{s}: not a facekit store (no shards directory {d})")
        if d.resolve() == store.shards_dir(out).resolve():
            raise MergeError(f"{s}: is the output store itself")
        dirs.append((s, d))
    store.check_writable(out)
    dest_dir = store.shards_dir(out)
    dest_dir.mkdir(parents=True, exist_ok=True)
    store.clean_stale_temps(out)
    report = MergeReport(out=str(out))
    for s, d in dirs:
        for p in sorted(d.iterdir()):
            if p.name.startswith(".") or not p.name.endswith(store.SHARD_SUFFIX):
                continue
            row = None if store._is_index(p) else store._read_shard_row(p)
            if row is None:
                report.unreadable.append(str(p))
                continue
            dest = dest_dir / p.name
            have = store._read_shard_row(dest) if dest.exists() else None
            if have is None:
                _copy_shard(p, dest_dir, p.name)
                report.copied.append(row.key)
            elif filecmp.cmp(p, dest, shallow=False):
                report.kept.append(row.key)
            elif have.status == store.STATUS_DONE and row.status == store.STATUS_DONE:
                if overwrite:
                    _copy_shard(p, dest_dir, p.name)
                    report.replaced.append(row.key)
                else:
                    report.conflicts.append(f"{row.key}: finished in both {out} and {s}; kept the one in {out} "
                                            f"(--overwrite takes {s}'s)")
            elif row.status == store.STATUS_DONE:  # a result replaces a failure
                _copy_shard(p, dest_dir, p.name)
                report.replaced.append(row.key)
            else:
                report.kept.append(row.key)
    rows = store.rebuild_index(out, {"merged_from": [str(s) for s in srcs]} if srcs else None)
    report.videos = len(rows)
    return report
