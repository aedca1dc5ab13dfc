"""JSON API under /api/v1 with bearer tokens. Every error is JSON with a 4xx code."""

from __future__ import annotations

import json
from typing import Any

from flask import Blueprint, Response, current_app, g, jsonify, request
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from werkzeug.exceptions import HTTPException

from .. import dispatch, serializers
from ..constants import DeliveryKind, DeliveryStatus
from ..extensions import db
from ..formatting import iso
from ..models import Callback, Delivery, Event, utcnow
from ..permissions import allowed
from ..services import audit, callbacks, delivery, ingest, settings
from ..services import tokens as token_service

bp = Blueprint("api", __name__, url_prefix="/api/v1")
EVENT_FIELDS = {"definition", "payload"}
UNAUTHORIZED = "A valid API token is required (Authorization: Bearer <token>)."


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, fields: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.fields = status, code, message, fields or {}
        self.headers: dict[str, str] = {}


@bp.errorhandler(ApiError)
def _api_error(exc: ApiError) -> Response:
    response = jsonify({"error": {"code": exc.code, "message": exc.message, "fields": exc.fields}})
    response.status_code = exc.status
    response.headers.update(exc.headers)
    if exc.status == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="cbdash"'
    return response


@bp.before_request
def _authenticate() -> None:
    if request.endpoint == "api.openapi":
        return
    token = token_service.authenticate(request.headers.get("Authorization"))
    if token is None:
        # Cookies are never accepted here: a logged-in browser cannot be tricked into calls.
        raise ApiError(401, "unauthorized", UNAUTHORIZED)
    g.api_token = token


# Routes take ids up to the database's 64-bit limit (``int`` is web.BoundedInt).
MAX_ID = 2**63 - 1
_ID_OWNERS = {"callbacks": "callback", "deliveries": "delivery"}


def _out_of_range_id() -> ApiError | None:
    """404 for an id in the path beyond any row's: "no such callback", like any missing id."""
    parts = request.path.split("/")
    for before, part in zip(parts, parts[1:], strict=False):
        digits = part.lstrip("0")
        if part.isascii() and part.isdigit() and (len(digits) > 19 or int(digits or 0) > MAX_ID):
            shown = part if len(part) <= 30 else part[:30] + "…"
            return ApiError(404, "not_found", f"No {_ID_OWNERS.get(before, 'object')} with id {shown}.")
    return None


@bp.before_app_request
def _out_of_range_route() -> Response | None:
    # Werkzeug picks the <int:...> route first and only then finds the number too big, so
    # it answers a bare 404, or a 405 for PATCH/DELETE (naming GET) — never reaching this
    # blueprint. Answer as for a missing id instead, after the usual token check.
    if request.routing_exception is None or not request.path.startswith(bp.url_prefix + "/"):
        return None
    error = _out_of_range_id()
    if error is None:
        return None
    if token_service.authenticate(request.headers.get("Authorization")) is None:
        error = ApiError(401, "unauthorized", UNAUTHORIZED)
    return _api_error(error)


def _need(permission: str) -> None:
    if not allowed(g.api_token.role, permission):
        raise ApiError(403, "forbidden", f"This token's role ({g.api_token.role}) cannot do that.")


def _not_json(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value")


def _finite(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise ValueError(f"{text} is out of range")
    return value


def _json_body(allow_empty: bool = False) -> dict[str, Any]:
    limit = settings.current().payload_limit
    if request.content_length is not None and request.content_length > limit:
        raise ApiError(413, "payload_too_large", f"The request body is over {limit} bytes.")
    raw = request.get_data(cache=True)
    if len(raw) > limit:
        raise ApiError(413, "payload_too_large", f"The request body is over {limit} bytes.")
    if not raw.strip():
        if allow_empty:
            return {}
        raise ApiError(400, "invalid_json", "Send a JSON object in the request body.")
    try:
        # NaN, Infinity and 1e400 are not JSON: receivers could not parse what we would send.
        data = json.loads(raw, parse_constant=_not_json, parse_float=_finite)
        json.dumps(data, ensure_ascii=False).encode("utf-8")  # lone surrogates (\ud800) cannot be sent either
    except (ValueError, UnicodeError) as exc:
        if "int_max_str_digits" in str(exc):  # Python's own advice is no use to an API client
            raise ApiError(400, "invalid_json", "The body has a number with more than 4300 digits.") from exc
        raise ApiError(400, "invalid_json", f"The body is not valid JSON: {exc}.") from exc
    except RecursionError as exc:
        raise ApiError(400, "invalid_json", "The body's JSON is nested too deeply.") from exc
    if not isinstance(data, dict):
        raise ApiError(400, "invalid_json", "The body must be a JSON object.")
    return data


def _unknown(data: dict[str, Any], known: set[str]) -> None:
    extra = sorted(set(data) - known)
    if extra:
        raise ApiError(
            400,
            "unknown_fields",
            "Unknown fields: " + ", ".join(extra[:10]) + ".",
            {name: "Unknown field." for name in extra[:10]},
        )


# Query parameters each list endpoint takes (as in the OpenAPI document). Anything else
# is refused by name: a filter that was silently ignored would answer the wrong question.
CALLBACK_LIST_PARAMS = ("status", "q", "page", "per_page")
DELIVERY_LIST_PARAMS = ("callback_id", "status", "kind", "limit", "before_id")


def _known_params(known: tuple[str, ...]) -> None:
    extra = sorted(set(request.args) - set(known))
    if extra:
        shown = [name[:40] for name in extra[:10]]
        raise ApiError(
            400,
            "unknown_parameters",
            f"Unknown query parameters: {', '.join(shown)}. This endpoint takes {', '.join(known)}.",
            {name: "Unknown parameter." for name in shown},
        )


def _int_arg(name: str) -> int | None:
    raw = request.args.get(name)
    if raw in (None, ""):
        return None
    try:
        return int(raw)
    except ValueError as exc:
        raise ApiError(
            400,
            "invalid_parameter",
            f"{name} must be a whole number.",
            {name: "Must be a whole number."},
        ) from exc


def _event_response(event: Event) -> dict[str, Any]:
    ids = list(
        db.session.scalars(
            select(Delivery.id)
            .where(Delivery.event_id == event.id, Delivery.kind == DeliveryKind.EVENT)
            .order_by(Delivery.id)
        )
    )
    return {"event_id": event.uid, "definition": event.definition, "delivery_ids": ids}


def _canonical(value: Any) -> str:
    """One spelling of a JSON value: key order and spacing do not make two payloads differ."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _replay(existing: Event, key: str, definition: str, payload: Any):  # type: ignore[no-untyped-def]
    """The first result for a repeated Idempotency-Key, or 409 when the request differs.

    As Stripe does: a key names one request. Answering a different definition or
    payload with the first event's result would drop the second event silently.
    """
    differs: dict[str, str] = {}
    if existing.definition != definition:
        differs["definition"] = f"The first request with this key had definition {existing.definition}."
    if _canonical(existing.payload) != _canonical(payload):
        differs["payload"] = "Differs from the payload of the first request with this key."
    if differs:
        raise ApiError(
            409,
            "idempotency_key_reused",
            f"Idempotency-Key {key!r} was already used for event {existing.uid} with a different "
            + " and ".join(differs)
            + ". Nothing was created: send a new key for a new event, or repeat the first "
            "request unchanged to get its result.",
            differs,
        )
    return jsonify({**_event_response(existing), "idempotent_replay": True}), 202


@bp.post("/events")
def create_event():  # type: ignore[no-untyped-def]
    _need("manage")
    data = _json_body()
    _unknown(data, EVENT_FIELDS)
    definition = data.get("definition")
    if not isinstance(definition, str) or not callbacks.NAME_RE.match(definition):
        raise ApiError(
            400,
            "invalid_field",
            "definition must be a definition name (3–100 of a-z 0-9 _ . -).",
            {"definition": "Invalid definition name."},
        )
    if "payload" not in data:
        raise ApiError(400, "invalid_field", "payload is required.", {"payload": "Required."})
    key = request.headers.get("Idempotency-Key")
    if key is None:
        # The hot path: committed and queued together with events arriving at the same time.
        new = ingest.submit(definition, data["payload"])
        return jsonify({"event_id": new.uid, "definition": definition, "delivery_ids": new.delivery_ids}), 202
    key = key.strip()
    if not key or len(key) > 255:
        raise ApiError(400, "invalid_header", "Idempotency-Key must be 1–255 characters.")
    existing = db.session.scalar(select(Event).where(Event.idempotency_key == key))
    if existing is not None:
        return _replay(existing, key, definition, data["payload"])
    # A key is unique in the database: written alone, so a clash fails only this request.
    new = ingest.record_event(definition, data["payload"], idempotency_key=key)
    try:
        db.session.commit()
    except IntegrityError:  # a concurrent request with the same key won
        db.session.rollback()
        existing = db.session.scalar(select(Event).where(Event.idempotency_key == key))
        if existing is None:
            raise
        return _replay(existing, key, definition, data["payload"])
    # Written with enqueued_at set (one commit).
    dispatch.ring_soon(new.delivery_ids)
    return jsonify({"event_id": new.uid, "definition": definition, "delivery_ids": new.delivery_ids}), 202


def _validate_callback(data: dict[str, Any], *, partial: bool = False) -> dict[str, Any]:
    """Clean callback fields, or 400 naming each bad field as the client sent it.

    ``"status": "active"|"inactive"`` is accepted as well as ``active``: it is what the
    callback JSON shows. Its errors are reported under ``status``, the field that was sent.
    """
    if "status" in data and "active" in data:
        raise ApiError(
            400,
            "invalid_fields",
            "Send either status or active, not both.",
            {"status": "Send either status or active, not both."},
        )
    via_status = "status" in data
    if via_status:
        data["active"] = data.pop("status")
    _unknown(data, callbacks.FIELDS)
    clean, errors = callbacks.validate(data, partial=partial)
    if via_status and "active" in errors:
        errors["status"] = errors.pop("active")
    if errors:
        raise ApiError(400, "invalid_fields", "Some fields are not valid.", errors)
    return clean


def _get_callback(callback_id: int) -> Callback:
    cb = db.session.get(Callback, callback_id)
    if cb is None or cb.deleted_at is not None:
        raise ApiError(404, "not_found", f"No callback with id {callback_id}.")
    return cb


def _failing_after() -> int:
    return settings.current().failing_after


@bp.get("/callbacks")
def list_callbacks():  # type: ignore[no-untyped-def]
    _known_params(CALLBACK_LIST_PARAMS)
    status = request.args.get("status", "all")
    if status not in {"all", "active", "inactive"}:
        raise ApiError(400, "invalid_parameter", "status must be all, active or inactive.")
    page = _int_arg("page") or 1
    per_page = min(max(_int_arg("per_page") or 50, 1), 200)
    listing = callbacks.listing(status, request.args.get("q", "")[:200], "newest", page, per_page)
    return jsonify(
        {
            "data": [serializers.callback(cb, _failing_after()) for cb in listing.items],
            "page": listing.page,
            "pages": listing.pages,
            "total": listing.total,
        }
    )


@bp.post("/callbacks")
def create_callback():  # type: ignore[no-untyped-def]
    _need("manage")
    clean = _validate_callback(_json_body())
    cb = callbacks.create(clean)
    db.session.flush()
    audit.record("callback.create", "callback", cb.id, {"definition": cb.definition, "url": cb.url})
    db.session.commit()
    # The one answer that carries the signing secret in full, so that an API-only user can
    # verify signatures; afterwards it is masked (GET /callbacks/<id>/secret shows it again).
    return jsonify({**serializers.callback(cb, _failing_after()), "secret": cb.secret}), 201


@bp.get("/callbacks/<int:callback_id>")
def get_callback(callback_id: int):  # type: ignore[no-untyped-def]
    return jsonify(serializers.callback(_get_callback(callback_id), _failing_after()))


@bp.patch("/callbacks/<int:callback_id>")
def update_callback(callback_id: int):  # type: ignore[no-untyped-def]
    _need("manage")
    cb = _get_callback(callback_id)
    clean = _validate_callback(_json_body(), partial=True)
    changes = callbacks.update(cb, clean)
    if changes:
        action = "callback.edit"
        if set(changes) == {"active"}:
            action = "callback.activate" if cb.active else "callback.deactivate"
        audit.record(action, "callback", cb.id, {"changes": changes})
    db.session.commit()
    return jsonify(serializers.callback(cb, _failing_after()))


@bp.delete("/callbacks/<int:callback_id>")
def delete_callback(callback_id: int):  # type: ignore[no-untyped-def]
    _need("manage")
    cb = _get_callback(callback_id)
    callbacks.soft_delete(cb)
    audit.record("callback.delete", "callback", cb.id, {"definition": cb.definition})
    db.session.commit()
    return "", 204


@bp.post("/callbacks/<int:callback_id>/ping")
def ping_callback(callback_id: int):  # type: ignore[no-untyped-def]
    _need("ping")
    cb = _get_callback(callback_id)
    _json_body(allow_empty=True)
    d = delivery.create_ping(cb)
    db.session.commit()
    dispatch.enqueue([d.id], at_front=True)
    return jsonify(serializers.delivery(d)), 202


@bp.get("/callbacks/<int:callback_id>/secret")
def reveal_secret(callback_id: int):  # type: ignore[no-untyped-def]
    """The signing secret in full: the API's Reveal, for the roles that may reveal in the UI."""
    _need("secrets")
    cb = _get_callback(callback_id)
    previous = None
    if cb.previous_secret and cb.previous_secret_expires_at and cb.previous_secret_expires_at > utcnow():
        previous = cb.previous_secret  # still signing alongside during the rotation overlap
    audit.record("callback.reveal_secret", "callback", cb.id, {"definition": cb.definition})
    db.session.commit()
    return jsonify(
        {
            "secret": cb.secret,
            "previous_secret": previous,
            "previous_secret_expires_at": iso(cb.previous_secret_expires_at) if previous else None,
        }
    )


@bp.post("/callbacks/<int:callback_id>/rotate-secret")
def rotate_secret(callback_id: int):  # type: ignore[no-untyped-def]
    _need("secrets")
    cb = _get_callback(callback_id)
    callbacks.rotate_secret(cb)
    audit.record("callback.rotate_secret", "callback", cb.id)
    db.session.commit()
    return jsonify({**serializers.callback(cb, _failing_after()), "new_secret": cb.secret})


@bp.get("/deliveries")
def list_deliveries():  # type: ignore[no-untyped-def]
    _known_params(DELIVERY_LIST_PARAMS)
    stmt = select(Delivery)
    callback_id = _int_arg("callback_id")
    if callback_id is not None:
        stmt = stmt.where(Delivery.callback_id == callback_id)
    status = request.args.get("status")
    if status:
        if status not in {s.value for s in DeliveryStatus}:
            raise ApiError(400, "invalid_parameter", "Unknown status.", {"status": "Unknown."})
        stmt = stmt.where(Delivery.status == status)
    kind = request.args.get("kind")
    if kind:
        if kind not in {k.value for k in DeliveryKind}:
            raise ApiError(400, "invalid_parameter", "Unknown kind.", {"kind": "Unknown."})
        stmt = stmt.where(Delivery.kind == kind)
    limit = min(max(_int_arg("limit") or 50, 1), 500)
    before = _int_arg("before_id")
    if before is not None:
        stmt = stmt.where(Delivery.id < before)
    rows = list(db.session.scalars(stmt.order_by(Delivery.id.desc()).limit(limit)))
    return jsonify(
        {
            "data": [serializers.delivery(d) for d in rows],
            "next_before_id": rows[-1].id if len(rows) == limit else None,
        }
    )


def _get_delivery(delivery_id: int) -> Delivery:
    d = db.session.get(Delivery, delivery_id)
    if d is None:
        raise ApiError(404, "not_found", f"No delivery with id {delivery_id}.")
    return d


@bp.get("/deliveries/<int:delivery_id>")
def get_delivery(delivery_id: int):  # type: ignore[no-untyped-def]
    return jsonify(serializers.delivery(_get_delivery(delivery_id), with_attempts=True))


@bp.post("/deliveries/<int:delivery_id>/redeliver")
def redeliver(delivery_id: int):  # type: ignore[no-untyped-def]
    _need("redeliver")
    original = _get_delivery(delivery_id)
    _json_body(allow_empty=True)
    d = delivery.create_redelivery(original)
    db.session.flush()
    audit.record("delivery.redeliver", "delivery", original.id, {"new_delivery_id": d.id})
    db.session.commit()
    dispatch.enqueue([d.id])
    return jsonify(serializers.delivery(d)), 202


@bp.get("/openapi.json")
def openapi():  # type: ignore[no-untyped-def]
    from ..openapi import document

    return jsonify(document(current_app.config["PAYLOAD_LIMIT"]))


@bp.route("/<path:_rest>", methods=["GET", "POST", "PATCH", "PUT", "DELETE"])
def not_found(_rest: str):  # type: ignore[no-untyped-def]
    out_of_range = _out_of_range_id()
    if out_of_range is not None:
        raise out_of_range
    # This catch-all also wins when a real endpoint exists for another method:
    # answer 405 with Allow then, as a client debugging its call would expect.
    adapter = current_app.url_map.bind_to_environ(request.environ)
    allowed = []
    for method in ("GET", "POST", "PATCH", "PUT", "DELETE"):
        try:
            endpoint, _args = adapter.match(request.path, method=method)
        except HTTPException:
            continue
        if endpoint != "api.not_found":
            allowed.append(method)
    if allowed:
        error = ApiError(
            405,
            "method_not_allowed",
            f"{request.method} is not allowed here; use " + " or ".join(allowed) + ".",
        )
        error.headers = {"Allow": ", ".join(allowed)}
        raise error
    raise ApiError(404, "not_found", "No such API endpoint. See /api/v1/openapi.json.")
