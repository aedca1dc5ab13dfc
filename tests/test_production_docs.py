"""The production guide and deploy samples stay true to the code."""

from __future__ import annotations

import re
import runpy

from cbdash import ROOT
from cbdash.config import SETTINGS

GUIDE = ROOT / "docs" / "production.md"


def test_the_production_guide_lists_every_setting():
    text = GUIDE.read_text(encoding="utf-8")
    missing = [name for name in SETTINGS if f"`CBDASH_{name}`" not in text]
    assert not missing, f"docs/production.md does not document: {missing}"


def test_the_sample_environment_uses_only_real_settings():
    sample = (ROOT / "deploy" / "cbdash.env.example").read_text(encoding="utf-8")
    names = re.findall(r"^#?\s*CBDASH_([A-Z_]+)=", sample, flags=re.M)
    assert names and set(names) <= set(SETTINGS) | {"INSTANCE_PATH"}


def test_every_deploy_file_the_guide_names_exists():
    text = GUIDE.read_text(encoding="utf-8")
    for unit in ("cbdash-web.service", "cbdash-worker@.service", "cbdash-migrate.service"):
        assert unit in text or unit.replace(".service", "") in text
        body = (ROOT / "deploy" / "systemd" / unit).read_text(encoding="utf-8")
        assert "EnvironmentFile=/etc/cbdash/cbdash.env" in body
    procfile = (ROOT / "deploy" / "Procfile").read_text(encoding="utf-8")
    assert "release: cbdash db upgrade" in procfile and "worker: cbdash worker" in procfile


def test_gunicorn_config_serves_threads_and_reads_its_environment(monkeypatch):
    monkeypatch.setenv("GUNICORN_BIND", "0.0.0.0:9999")
    monkeypatch.setenv("GUNICORN_WORKERS", "3")
    conf = runpy.run_path(str(ROOT / "gunicorn.conf.py"))
    assert conf["worker_class"] == "gthread" and conf["threads"] >= 2
    assert conf["bind"] == "0.0.0.0:9999" and conf["workers"] == 3
    # Longer than the longest synchronous invocation a callback timeout allows.
    assert conf["timeout"] > SETTINGS["MAX_TIMEOUT"][0]
