"""The htmx request vocabulary, in one place."""

from __future__ import annotations

from flask import Response, request


def is_htmx() -> bool:
    """True for requests htmx made (not history restores, which want full pages)."""
    return request.headers.get("HX-Request") == "true"


def wants_fragment() -> bool:
    """A fragment is wanted: an htmx request that is not a history-cache miss restore."""
    return is_htmx() and request.headers.get("HX-History-Restore-Request") != "true"


def add_vary(response: Response) -> Response:
    """Pages that branch on htmx must not share a cache entry with the fragment."""
    response.vary.add("HX-Request")
    return response


def redirect(response: Response, url: str) -> Response:
    """Ask htmx for a full-page navigation (used for expired sessions)."""
    response.headers["HX-Redirect"] = url
    return response


def trigger(response: Response, event: str) -> Response:
    response.headers["HX-Trigger"] = event
    return response
