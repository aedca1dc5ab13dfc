"""Failed-login throttling per account and per address, kept in Redis."""

from __future__ import annotations

import hashlib

from flask import current_app

from ..queue import get_redis

MAX_FAILURES = 5
WINDOW_SECONDS = 300


def _keys(email: str, ip: str) -> list[str]:
    digest = hashlib.sha256(email.encode()).hexdigest()[:24]
    return [f"cbdash:login:acct:{digest}", f"cbdash:login:ip:{ip}"]


def login_blocked(email: str, ip: str) -> int:
    """Seconds to wait before another try, or 0."""
    try:
        redis = get_redis()
        for key in _keys(email, ip):
            failures = int(redis.get(key) or 0)
            limit = MAX_FAILURES if ":acct:" in key else MAX_FAILURES * 4
            if failures >= limit:
                return max(int(redis.ttl(key)), 1)
    except Exception:  # noqa: BLE001 - no Redis: do not lock everyone out
        current_app.logger.warning("login throttle unavailable (Redis)")
    return 0


def login_failed(email: str, ip: str) -> None:
    try:
        redis = get_redis()
        with redis.pipeline() as pipe:
            for key in _keys(email, ip):
                pipe.incr(key)
                pipe.expire(key, WINDOW_SECONDS)
            pipe.execute()
    except Exception:  # noqa: BLE001
        current_app.logger.warning("login throttle unavailable (Redis)")


def login_succeeded(email: str, ip: str) -> None:
    try:
        get_redis().delete(_keys(email, ip)[0])
    except Exception:  # noqa: BLE001
        pass
