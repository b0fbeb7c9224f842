"""The documentation site builds (mkdocs --strict) and documents every command."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import click
import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"


def _command_paths(group: click.Group, prefix: str = "") -> list[str]:
    """'extract', 'models', 'models list', ... for every command registered under ``group``."""
    out = []
    for name, cmd in sorted(group.commands.items()):
        if getattr(cmd, "hidden", False):
            continue
        path = f"{prefix}{name}"
        out.append(path)
        if isinstance(cmd, click.Group):
            out += _command_paths(cmd, path + " ")
    return out


def test_mkdocs_build_strict(tmp_path):
    pytest.importorskip("mkdocs", reason="mkdocs is not installed (pip install -e '.[docs]')")
    pytest.importorskip("mkdocs_click", reason="mkdocs-click is not installed (pip install -e '.[docs]')")
    site = tmp_path / "site"
    p = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, f"mkdocs build --strict failed:\n{p.stdout}\n{p.stderr}"
    assert (site / "index.html").is_file()
    # the CLI reference was generated from the click commands, not left as the directive
    cli = (site / "cli" / "index.html").read_text(encoding="utf-8")
    assert ":::" not in cli and "facekit extract" in cli
    # the changelog hook included CHANGELOG.md
    changelog = (site / "changelog" / "index.html").read_text(encoding="utf-8")
    assert "include: CHANGELOG.md" not in changelog


def test_every_command_is_documented():
    from facekit.cli import main

    text = (DOCS / "commands.md").read_text(encoding="utf-8")
    paths = _command_paths(main)
    assert paths, "no command registered in facekit.cli.main"
    missing = [p for p in paths if not re.search(rf"facekit {re.escape(p)}\b", text)]
    assert not missing, f"commands not documented in docs/commands.md: {missing}"
