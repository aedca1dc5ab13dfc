"""WSGI entry point for production servers: ``gunicorn wsgi:app``."""

from cbdash import create_app

app = create_app()
