"""gunicorn settings for cbdash: ``gunicorn wsgi:app`` reads this file from the working directory.

Each value can be changed with an environment variable (``GUNICORN_*`` below) or
gunicorn's own ``GUNICORN_CMD_ARGS``; the figures behind the defaults are in
docs/production.md (sizing).
"""

import os

_cpus = os.cpu_count() or 1

bind = os.environ.get("GUNICORN_BIND", "127.0.0.1:8000")
# Threads let one process overlap database and Redis round trips; processes use the cores.
worker_class = "gthread"
workers = int(os.environ.get("GUNICORN_WORKERS", max(2, _cpus)))
threads = int(os.environ.get("GUNICORN_THREADS", 4))
# Synchronous invocations (POST /api/v1/definitions/<name>/invoke) wait for receivers:
# up to CBDASH_MAX_TIMEOUT per callback tried, so the request timeout must be longer.
timeout = int(os.environ.get("GUNICORN_TIMEOUT", 120))
graceful_timeout = int(os.environ.get("GUNICORN_GRACEFUL_TIMEOUT", 30))
keepalive = int(os.environ.get("GUNICORN_KEEPALIVE", 5))
# Recycle processes now and then, jittered so they do not all restart at once.
max_requests = int(os.environ.get("GUNICORN_MAX_REQUESTS", 5000))
max_requests_jitter = max_requests // 10
accesslog = os.environ.get("GUNICORN_ACCESSLOG", "-")
errorlog = "-"
loglevel = os.environ.get("GUNICORN_LOGLEVEL", "info")
# Proxy headers are handled by cbdash itself (CBDASH_TRUSTED_PROXIES), not by gunicorn.
forwarded_allow_ips = "127.0.0.1"
