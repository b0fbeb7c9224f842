"""MkDocs hook: in the generated CLI reference, show the "Examples:" of each command as code.

mkdocs-click copies each command's docstring into the page as Markdown, where the indented
example lines of ``--help`` would run together into one paragraph. This adds a Markdown
preprocessor, run after mkdocs-click's (priority 141) and only on cli.md, that turns the indented
lines following an "Example:"/"Examples:" line into a fenced ``text`` block. Nothing else changes.
"""

from __future__ import annotations

import textwrap

from markdown.extensions import Extension
from markdown.preprocessors import Preprocessor

PAGE = "cli.md"
_state = {"active": False}


class _Examples(Preprocessor):
    def run(self, lines: list[str]) -> list[str]:
        if not _state["active"]:
            return lines
        out: list[str] = []
        i, n = 0, len(lines)
        while i < n:
            line = lines[i]
            out.append(line)
            i += 1
            if line.strip() not in ("Example:", "Examples:") or line.startswith(" "):
                continue
            block: list[str] = []
            while i < n and (not lines[i].strip() or lines[i].startswith("  ")):
                block.append(lines[i])
                i += 1
            while block and not block[-1].strip():
                block.pop()
            code = [b for b in block if b.strip()]
            if not code:
                out += block
                continue
            out += ["", "```text", *textwrap.dedent("\n".join(code)).splitlines(), "```", ""]
        return out


class _Extension(Extension):
    def extendMarkdown(self, md):  # noqa: N802 - Markdown's API
        md.preprocessors.register(_Examples(md), "facekit_cli_examples", 100)


def on_config(config):
    config.markdown_extensions.append(_Extension())
    return config


def on_page_markdown(markdown: str, page, config, files) -> str:
    _state["active"] = page.file.src_uri == PAGE
    return markdown
