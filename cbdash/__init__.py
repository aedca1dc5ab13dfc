"""cbdash: a self-hosted Callbacks dashboard and delivery engine."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from flask import Flask

ROOT = Path(__file__).resolve().parent.parent


def create_app(test_config: dict[str, Any] | None = None) -> Flask:
    """Application factory: config → extensions → blueprints → CLI → errors."""
    instance_path = Path(os.environ.get("CBDASH_INSTANCE_PATH") or ROOT / "instance").resolve()
    if test_config and test_config.get("INSTANCE_PATH"):
        instance_path = Path(test_config["INSTANCE_PATH"]).resolve()
    app = Flask(
        __name__,
        instance_path=str(instance_path),
        instance_relative_config=True,
        template_folder=str(ROOT / "templates"),
        static_folder=str(ROOT / "static"),
    )
    instance_path.mkdir(parents=True, exist_ok=True)
    app.config.from_pyfile("config.py", silent=True)

    from . import config

    config.load(app.config, instance_path, test_config)
    app.config.setdefault("SESSION_COOKIE_HTTPONLY", True)
    app.config.setdefault("SESSION_COOKIE_SAMESITE", "Lax")
    app.config.setdefault("REMEMBER_COOKIE_HTTPONLY", True)
    app.config.setdefault("REMEMBER_COOKIE_SAMESITE", "Lax")
    # The CSRF token lives as long as the session, so a monitoring page left open
    # for hours can still post; the session itself expires on logout.
    app.config.setdefault("WTF_CSRF_TIME_LIMIT", None)
    app.config["MAX_CONTENT_LENGTH"] = int(app.config["PAYLOAD_LIMIT"]) + 64 * 1024

    from .extensions import csrf, db, login_manager, migrate, ping_when_idle, tune_sqlite

    db.init_app(app)
    tune_sqlite(app)
    ping_when_idle(app)
    migrate.init_app(app, db, directory=str(ROOT / "migrations"))
    csrf.init_app(app)
    login_manager.init_app(app)

    from . import web
    from .views import register

    web.init_app(app)
    register(app)

    from .cli import register_cli

    register_cli(app)
    return app
