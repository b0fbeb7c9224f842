"""MkDocs hook: the changelog page shows the repository's CHANGELOG.md (one source, no copy).

docs/changelog.md holds the marker line below; at build time it is replaced by CHANGELOG.md
without its first-level title. Nothing is fetched: the file is read from the checkout.
"""

from __future__ import annotations

from pathlib import Path

MARKER = "<!-- include: CHANGELOG.md -->"


def on_page_markdown(markdown: str, page, config, files) -> str:
    if MARKER not in markdown:
        return markdown
    path = Path(config["config_file_path"]).parent / "CHANGELOG.md"
    lines = path.read_text(encoding="utf-8").splitlines()
    if lines and lines[0].startswith("# "):
        lines = lines[1:]
    return markdown.replace(MARKER, "\n".join(lines).strip() + "\n")
