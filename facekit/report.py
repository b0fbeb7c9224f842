"""Summaries of a store: what ``facekit info`` prints (as text or JSON)."""

from __future__ import annotations

from collections import Counter

from .store import Store


def store_info(path) -> dict:
    """A JSON-ready summary of the store at ``path``: videos, frames, faces, streams, failures."""
    with Store(path) as st:
        videos, failures, streams = [], [], Counter()
        n_frames = n_faces = 0
        for key in st:
            v = st[key]
            a = v.attrs
            row = {"key": key, "status": v.status, "n_frames": int(a.get("n_frames", 0) or 0),
                   "n_faces": int(a.get("n_faces", 0) or 0), "duration_sec": a.get("duration_sec"),
                   "fps_avg": a.get("fps_avg"), "width": a.get("width"), "height": a.get("height"),
                   "stages": a.get("stages", []), "audio": {}, "warnings": a.get("warnings") or []}
            for name, s in v.audio.items():
                row["audio"][name] = {"frames": len(s), "dim": int(s.group["data"].shape[1]),
                                      "status": s.attrs.get("audio_status", "ok")}
                streams[f"audio/{name}"] += 1
            if "faces" in v.group:
                streams["faces"] += 1
            if v.status == "failed":
                failures.append({"key": key, "path": a.get("source_path", ""), "error": v.error})
            n_frames += row["n_frames"]
            n_faces += row["n_faces"]
            videos.append(row)
        status = Counter(r["status"] for r in videos)
        return {
            "path": str(st.path), "facekit_version": st.attrs.get("facekit_version"),
            "schema_version": st.attrs.get("schema_version"), "command": st.attrs.get("command"),
            "videos": len(videos), "done": status.get("done", 0), "failed": status.get("failed", 0),
            "frames": n_frames, "faces": n_faces, "streams": dict(streams), "failures": failures,
            "per_video": videos,
        }


def format_info(d: dict, per_video: bool = True) -> str:
    lines = [f"{d['path']}  (facekit {d['facekit_version']}, schema v{d['schema_version']})",
             f"videos: {d['videos']}  done: {d['done']}  failed: {d['failed']}  "
             f"frames: {d['frames']}  faces: {d['faces']}"]
    if d["streams"]:
        lines.append("streams: " + ", ".join(f"{k} ({n} videos)" for k, n in sorted(d["streams"].items())))
    if per_video and d["per_video"]:
        w = min(48, max(len(r["key"]) for r in d["per_video"]))
        lines.append("")
        lines.append(f"{'key':<{w}}  {'status':<7} {'frames':>7} {'faces':>7} {'dur(s)':>7}  audio")
        for r in d["per_video"]:
            dur = r["duration_sec"]
            audio = ", ".join(f"{k} {v['frames']}x{v['dim']}" + ("" if v["status"] == "ok" else f" ({v['status']})")
                              for k, v in r["audio"].items())
            lines.append(f"{r['key'][-w:]:<{w}}  {r['status']:<7} {r['n_frames']:>7} {r['n_faces']:>7} "
                         f"{'' if dur is None else f'{dur:.2f}':>7}  {audio}")
    if d["failures"]:
        lines.append("")
        lines.append("failures:")
        lines += [f"  {f['key']}: {f['error']}" for f in d["failures"]]
    return "\n".join(lines)
