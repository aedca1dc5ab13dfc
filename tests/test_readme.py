"""README stays true: every setting and every command is documented."""

from __future__ import annotations

from pathlib import Path

from cbdash.config import SETTINGS

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def test_every_setting_is_documented_in_readme():
    missing = [name for name in SETTINGS if f"CBDASH_{name}" not in README]
    assert missing == []


def test_every_cli_command_is_documented_in_readme(app):
    missing = [name for name in app.cli.commands if f"cbdash {name}" not in README]
    assert missing == []


def test_readme_commands_exist():
    root = Path(__file__).resolve().parent.parent
    assert (root / "scripts" / "up").exists() and "./scripts/up" in README
    assert (root / "scripts" / "test").exists() and "./scripts/test" in README
    assert "./scripts/test" in (root / ".ci" / "run").read_text()
