"""Blueprints, one per page family."""

from __future__ import annotations

from flask import Flask, redirect, url_for


def register(app: Flask) -> None:
    from ..extensions import csrf
    from . import api, auth, callbacks, deliveries, invoke, ops, sync  # noqa: F401 - invoke adds api.bp routes

    app.register_blueprint(auth.bp)
    app.register_blueprint(callbacks.bp)
    app.register_blueprint(deliveries.bp)
    app.register_blueprint(ops.bp)
    from . import api_stats, monitoring  # noqa: F401 - api_stats adds its routes to api.bp

    app.register_blueprint(monitoring.bp)
    app.register_blueprint(sync.bp)
    from . import inbound

    app.register_blueprint(inbound.bp)  # POST /hooks/<slug> is CSRF-exempt in the view
    from . import recovery

    app.register_blueprint(recovery.bp)
    from . import audit, secrets, tokens, users

    for security_bp in (users.bp, tokens.bp, audit.bp, secrets.bp):
        app.register_blueprint(security_bp)
    # Bearer-token API: no cookies are honoured there, so CSRF does not apply.
    csrf.exempt(api.bp)
    app.register_blueprint(api.bp)

    @app.get("/")
    def index():  # type: ignore[no-untyped-def]
        return redirect(url_for("callbacks.index"))
