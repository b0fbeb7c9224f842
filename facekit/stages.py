"""Stages: the units of work a pipeline is made of, and how a list of names becomes a pipeline.

A stage has a ``name`` (the word used by ``--stages``, in the store and in the docs), the input it
consumes (``"frames"`` or ``"audio"``), the stages it ``requires``, and the store paths it writes
(``outputs``, relative to the video group). It is built once per worker process from the run's
``Config`` (models load then, never per video) and then fed every video:

    stage.begin(writer, info)                 create its datasets (empty, right shapes)
    stage.prepare(batch)                      optional (when ``prepares`` is true): work on a batch that
                                              needs no other stage's output, run by the engine in a
                                              background thread one batch ahead (results go to
                                              ``batch.prepared[name]``), so it overlaps the other stages;
                                              a stage may split it into several steps
                                              (``prepare_steps``), each then in its own thread
    stage.on_frames(batch, row0, writer)      frame stages: one FrameBatch at a time; the faces
                                              found so far in the batch are in ``batch.faces``
                                              (name -> array, one row per face, display pixels)
    stage.on_audio(samples, start_sec, writer) audio stages: the whole 16 kHz mono track
    stage.end(writer)                         finish

``params`` is everything that determines the output (model name and weights sha256 included):
a finished video is skipped on re-run only when every requested stage's params are unchanged,
and stored outputs of a stage with equal params are reused instead of recomputed.
"""

from __future__ import annotations

from typing import ClassVar

#: The order stages run in; DESIGN.md's full list (later issues add the missing ones).
CANONICAL_ORDER = ["detect", "track", "landmarks", "align", "pose", "crop", "parse", "embed",
                   "mel", "whisper", "vggish"]


class StageError(Exception):
    """A stage name is unknown or not available in this version."""


class Stage:
    name: ClassVar[str]
    consumes: ClassVar[str]  # "frames" or "audio"
    requires: ClassVar[tuple[str, ...]] = ()
    outputs: ClassVar[tuple[str, ...]] = ()
    #: whether ``prepare`` does anything (the engine then runs it ahead, in a background thread)
    prepares: bool = False

    def __init__(self, config):
        self.config = config

    @property
    def params(self) -> dict:
        raise NotImplementedError

    def begin(self, writer, info) -> None:
        pass

    def prepare(self, batch) -> None:
        pass

    def prepare_steps(self) -> list:
        """The callables ``f(batch)`` the engine runs ahead, in this order, each in its own background
        thread (every batch goes through them in turn): ``[self.prepare]``, or none when the stage
        does not prepare. A stage whose preparation has parts that can overlap lists them here."""
        return [self.prepare] if self.prepares else []

    def on_frames(self, batch, row0: int, writer) -> None:
        pass

    def on_audio(self, samples, start_sec: float, writer) -> None:
        pass

    def write_faces(self, writer, batch) -> None:
        """Append this stage's ``faces/<name>`` outputs from ``batch.faces`` to the store."""
        for path in self.outputs:
            if path.startswith("faces/"):
                writer.append(path, batch.faces[path[len("faces/"):]])

    def end(self, writer) -> None:
        pass


REGISTRY: dict[str, type[Stage]] = {}


def register(cls: type[Stage]) -> type[Stage]:
    REGISTRY[cls.name] = cls
    return cls


def load_builtin() -> None:
    from .face import crop, detect, landmarks, pose, tracking  # noqa: F401  (register their stages)
    from .face import parse  # noqa: F401  (registers "parse")
    from .face import embed  # noqa: F401  (registers "embed")
    from .audio import mel  # noqa: F401  (registers "mel")
    from .audio import vggish  # noqa: F401  (registers "vggish")
    from .audio import whisper  # noqa: F401  (registers "whisper")


def available() -> list[str]:
    load_builtin()
    return [s for s in CANONICAL_ORDER if s in REGISTRY]


def resolve(names) -> list[str]:
    """Stage names -> the ordered list to run, prerequisites added. Raises StageError."""
    load_builtin()
    if isinstance(names, str):
        names = [n for n in names.split(",")]
    wanted: list[str] = []

    def add(n: str):
        n = n.strip()
        if not n:
            return
        if n not in REGISTRY:
            if n in CANONICAL_ORDER:
                raise StageError(f"stage {n!r} is not available in this facekit version "
                                 f"(available: {', '.join(available())})")
            raise StageError(f"unknown stage {n!r} (available: {', '.join(available())})")
        for r in REGISTRY[n].requires:
            add(r)
        if n not in wanted:
            wanted.append(n)

    for n in names:
        add(n)
    if not wanted:
        raise StageError("no stage to run")
    return sorted(wanted, key=CANONICAL_ORDER.index)
