"""Synchronous invocations (SPEC §6): ask a definition's receivers and wait for the answer.

The web thread calls the active callbacks of a definition in priority order
(lower ``priority`` first, then oldest) until one answers 2xx. Each call goes
through the same signer, SSRF guard and deadline-bounded transport as every
delivery and is logged as a Delivery of kind ``invoke`` with its Attempt.
Invocations never retry: the caller is waiting, so a failure goes straight to
the next callback, then to the failure policy (``fail``: 502/504 to the
caller; ``fallback``: the first configured static response in priority order).

No database connection is held while a receiver is being waited on: the
delivery row is committed first and the request is sent from a detached
snapshot of the callback, so slow receivers cannot exhaust the pool.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from flask import Flask
from sqlalchemy import select

from ..constants import DeliveryKind, DeliveryStatus, ErrorClass
from ..extensions import db
from ..formatting import mask_url
from ..models import Callback, Delivery, Event, utcnow
from . import breaker, delivery, settings

FAIL = "fail"
FALLBACK = "fallback"
POLICIES = (FAIL, FALLBACK)
# Kept back from the caller's timeout for recording the outcome and answering.
RESERVE_S = 0.15
# Below this much time left, a callback is not called at all.
MIN_BUDGET_S = 0.05
BODY_TEXT_LIMIT = 4096
FALLBACK_LIMIT = 16 * 1024
PRIORITY_RANGE = (0, 10000)
# Skip reasons that are not HTTP errors (the transport's classes cover the rest).
CIRCUIT_OPEN = "circuit_open"
NO_TIME = "no_time_left"

_sweep_lock = threading.Lock()
_last_sweep = 0.0


Finalizer = Callable[[], None]


class InvokeError(Exception):
    """The invocation could not start (nothing to call, bad input): a 4xx for the caller."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


@dataclass
class Tried:
    """One callback of the chain: called, or skipped with the reason."""

    callback_id: int
    delivery_id: int | None
    status: int | None = None
    error_class: str | None = None
    message: str = ""
    duration_ms: float = 0.0
    skipped: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {
            "callback_id": self.callback_id,
            "delivery_id": self.delivery_id,
            "status": self.status,
            "error": self.error_class,
            "message": self.message,
            "duration_ms": self.duration_ms,
            "skipped": self.skipped,
        }


@dataclass
class Result:
    """What the caller gets: the answer, a fallback, or an error naming the cause."""

    http_status: int
    status: int | None = None
    body: Any = None
    body_is_json: bool = False
    body_text: str | None = None
    content_type: str | None = None
    duration_ms: float = 0.0
    total_ms: float = 0.0
    callback_id: int | None = None
    delivery_id: int | None = None
    fallback: bool = False
    error_code: str | None = None
    message: str = ""
    tried: list[Tried] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.http_status == 200

    @property
    def pretty_body(self) -> str:
        """The JSON body indented for people, keys in the receiver's order."""
        return json.dumps(self.body, indent=2, ensure_ascii=False)

    def as_dict(self) -> dict[str, Any]:
        """The API's JSON: the answer (or fallback), or ``{"error": ...}`` plus what was tried."""
        tried = [t.as_dict() for t in self.tried]
        if not self.ok:
            return {
                "error": {"code": self.error_code, "message": self.message, "fields": {}},
                "status": self.status,
                "duration_ms": self.duration_ms,
                "total_ms": self.total_ms,
                "callback_id": self.callback_id,
                "delivery_id": self.delivery_id,
                "tried": tried,
            }
        data: dict[str, Any] = {
            "status": self.status,
            "body": self.body,
            "duration_ms": self.duration_ms,
            "total_ms": self.total_ms,
            "callback_id": self.callback_id,
            "delivery_id": self.delivery_id,
            "fallback": self.fallback,
            "body_is_json": self.body_is_json,
            "content_type": self.content_type,
            "tried": tried,
        }
        if self.fallback:
            data["fallback_reason"] = self.message
        elif not self.body_is_json:
            data["body_text"] = self.body_text
            data["warning"] = self.message
        return data


def invoke(
    definition: str,
    payload: Any,
    *,
    timeout: float | None = None,
    only: Callback | None = None,
    test: bool = False,
    defer: list[Finalizer] | None = None,
) -> Result:
    """Call the definition's active callbacks (or just ``only``) until one answers 2xx.

    With ``defer``, recording each answered call (attempt, delivery outcome, health,
    breaker) is appended there instead of done inline, for ``run_deferred`` once the
    caller has its answer: the caller then never waits on database writes after the
    receiver answered, however busy the database is.
    """
    started = time.monotonic()
    cfg = settings.current()
    _sweep_lost()
    if only is not None:
        if only.deleted_at is not None:
            raise InvokeError(404, "not_found", "That callback was deleted.")
        if not only.active:
            raise InvokeError(
                409,
                "callback_inactive",
                f"Callback #{only.id} is inactive ({only.inactive_reason or 'manual'}); activate it first.",
            )
        chain = [only]
    else:
        chain = delivery.active_callbacks(definition)
    if not chain:
        raise InvokeError(404, "no_callbacks", f"No active callback is configured for {definition}.")
    budget_total = float(timeout) - RESERVE_S if timeout else float(cfg.max_timeout)
    deadline = started + max(budget_total, 0.0)
    links = [_link(cb) for cb in chain]  # read now: the commits below expire the rows

    event = delivery.new_event(definition, payload, source="call_now" if test else "invoke", test=test)
    body = event.body.encode()
    tried: list[Tried] = []
    answer: Tried | None = None
    response = None
    for cb in chain:
        remaining = deadline - time.monotonic()
        if remaining < MIN_BUDGET_S:
            tried.append(_skip(event, cb, NO_TIME, "not called: no time left within the caller's timeout"))
            continue
        admission = breaker.admit(cb)
        if not admission.allowed:
            tried.append(_skip(event, cb, CIRCUIT_OPEN, admission.reason))
            continue
        attempt, response = _call(event, body, cb, min(float(cb.timeout), remaining), admission.trial, defer)
        tried.append(attempt)
        if attempt.error_class is None:
            answer = attempt
            break
    db.session.commit()  # one commit for the last attempt and any skipped callbacks
    total_ms = round((time.monotonic() - started) * 1000, 2)
    if answer is not None and response is not None:
        return _answered(answer, response, tried, total_ms)
    return _failed(links, tried, total_ms)


@dataclass(frozen=True)
class _Link:
    """What the outcome needs to know about one callback of the chain."""

    id: int
    where: str
    failure_policy: str
    fallback_response: Any


def _link(cb: Callback) -> _Link:
    return _Link(cb.id, mask_url(cb.url)[:120], cb.failure_policy, cb.fallback_response)


def _snapshot(cb: Callback) -> Callback:
    """A detached copy with what sending needs, so the request never touches the database."""
    return Callback(
        url=cb.url,
        timeout=cb.timeout,
        headers=dict(cb.headers or {}),
        secret=cb.secret,
        previous_secret=cb.previous_secret,
        previous_secret_expires_at=cb.previous_secret_expires_at,
    )


def _skip(event: Event, cb: Callback, code: str, reason: str) -> Tried:
    now = utcnow()
    d = Delivery(
        event=event,
        callback_id=cb.id,
        kind=DeliveryKind.INVOKE,
        status=DeliveryStatus.SKIPPED,
        status_detail=reason[:255],
        created_at=now,
        finished_at=now,
    )
    db.session.add(d)
    db.session.flush()  # committed with the rest of the invocation
    return Tried(cb.id, d.id, error_class=code, message=reason, skipped=True)


def _call(
    event: Event, body: bytes, cb: Callback, budget: float, trial: bool, defer: list[Finalizer] | None
) -> tuple[Tried, delivery.transport.Response]:
    """One signed request within ``budget`` seconds, logged as an ``invoke`` delivery."""
    snapshot = _snapshot(cb)
    now = utcnow()
    # Written before the request so the log shows the call in flight. It is left
    # without a claim deadline, so the reconciler never picks it up for a retry.
    d = Delivery(
        event=event,
        callback_id=cb.id,
        kind=DeliveryKind.INVOKE,
        status=DeliveryStatus.SENDING,
        attempt_count=1,
        created_at=now,
    )
    db.session.add(d)
    db.session.flush()
    # Read before the commit expires them: nothing below may query while we wait.
    delivery_id, callback_id, webhook_id, timeout = d.id, cb.id, d.webhook_id, cb.timeout
    db.session.commit()  # releases the connection while we wait on the receiver
    result, headers = delivery.send(snapshot, webhook_id, body, DeliveryKind.INVOKE, timeout=budget)
    cause = _cause(result, budget, timeout)

    def record() -> None:
        d = db.session.get(Delivery, delivery_id)
        fresh = db.session.get(Callback, callback_id, populate_existing=True)
        if d is None or fresh is None:  # pruned or purged meanwhile: nothing left to record on
            return
        delivery.record_attempt(d, result, headers, now)
        delivery.finish(d, fresh, result)
        if d.status not in (DeliveryStatus.SUCCEEDED, DeliveryStatus.FAILED):
            # The caller is waiting now or never: an invocation is never retried.
            d.status = DeliveryStatus.FAILED
            d.next_attempt_at = None
            d.finished_at = d.finished_at or utcnow()
        if result.ok:
            breaker.record_success(fresh, trial)
        else:
            breaker.record_failure(fresh, trial, cause)
        db.session.flush()

    if defer is None:
        record()  # committed by invoke(): one commit per call
    else:
        defer.append(record)
    return (
        Tried(
            callback_id,
            delivery_id,
            status=result.status_code,
            error_class=result.error_class,
            message="" if result.ok else cause,
            duration_ms=result.duration_ms,
        ),
        result,
    )


def _cause(result: delivery.transport.Response, budget: float, timeout: int) -> str:
    if result.ok:
        return ""
    if result.error_class == ErrorClass.TIMEOUT:
        if budget < timeout:
            return f"no answer within the {budget:.1f} s left of the caller's timeout"
        return f"no complete answer within the callback's {timeout} s timeout"
    if result.error_class == ErrorClass.HTTP_STATUS:
        return f"receiver answered HTTP {result.status_code}"
    if result.error_class == ErrorClass.REDIRECT:
        return f"receiver answered a redirect ({result.status_code}, not followed)"
    return (result.error_message or result.error_class or "failed")[:300]


def _answered(
    answer: Tried, response: delivery.transport.Response, tried: list[Tried], total_ms: float
) -> Result:
    content_type = response.headers.get("content-type")
    result = Result(
        http_status=200,
        status=response.status_code,
        content_type=content_type,
        duration_ms=answer.duration_ms,
        total_ms=total_ms,
        callback_id=answer.callback_id,
        delivery_id=answer.delivery_id,
        tried=tried,
    )
    raw = response.body
    if response.truncated:
        result.message = (
            f"The receiver answered {response.status_code} with a body too large to read in full "
            f"({response.body_size or len(raw)} bytes); it is not parsed."
        )
    elif not raw.strip():
        result.message = f"The receiver answered {response.status_code} with an empty body."
    else:
        try:
            result.body = json.loads(raw)
            result.body_is_json = True
        except (ValueError, UnicodeDecodeError):
            result.message = (
                f"The receiver answered {response.status_code} with a body that is not JSON "
                f"({content_type or 'no Content-Type'}); see body_text."
            )
    if not result.body_is_json:
        result.body_text = raw[:BODY_TEXT_LIMIT].decode("utf-8", errors="replace")
    return result


def _failed(links: list[_Link], tried: list[Tried], total_ms: float) -> Result:
    by_id = {link.id: link for link in links}
    causes = "; ".join(
        f"callback #{t.callback_id} ({by_id[t.callback_id].where}): {t.message}" for t in tried
    )
    last = tried[-1]
    provider = next(
        (link for link in links if link.failure_policy == FALLBACK and link.fallback_response is not None),
        None,
    )
    if provider is not None:
        used = next(t for t in tried if t.callback_id == provider.id)
        return Result(
            http_status=200,
            status=None,
            body=provider.fallback_response,
            body_is_json=True,
            content_type="application/json",
            duration_ms=total_ms,
            total_ms=total_ms,
            callback_id=provider.id,
            delivery_id=used.delivery_id,
            fallback=True,
            message=f"Fallback of callback #{provider.id} used: {causes}",
            tried=tried,
        )
    timed_out = last.error_class in (ErrorClass.TIMEOUT, NO_TIME)
    if all(t.error_class == CIRCUIT_OPEN for t in tried):
        code = CIRCUIT_OPEN
    else:
        code = "receiver_timeout" if timed_out else "bad_gateway"
    return Result(
        http_status=504 if timed_out else 502,
        status=last.status,
        duration_ms=total_ms,
        total_ms=total_ms,
        callback_id=last.callback_id,
        delivery_id=last.delivery_id,
        error_code=code,
        message=f"No usable answer: {causes}",
        tried=tried,
    )


def _sweep_lost(every: float = 60.0) -> None:
    """Fail invocations left ``sending`` by a web process that died mid-call (at most once a minute)."""
    global _last_sweep
    now_m = time.monotonic()
    with _sweep_lock:
        if now_m - _last_sweep < every:
            return
        _last_sweep = now_m
    cutoff = utcnow() - timedelta(seconds=settings.current().max_timeout + 60)
    lost = list(
        db.session.scalars(
            select(Delivery.id)
            .where(
                Delivery.status == DeliveryStatus.SENDING,
                Delivery.kind == DeliveryKind.INVOKE,
                Delivery.created_at < cutoff,
            )
            .limit(1000)
        )
    )
    if lost:
        # Through the ORM, so monitoring's counting hooks see each failure.
        for d in db.session.scalars(
            select(Delivery).where(Delivery.id.in_(lost), Delivery.status == DeliveryStatus.SENDING)
        ):
            d.status = DeliveryStatus.FAILED
            d.status_detail = "web process lost during the call; the caller got no answer"
            d.finished_at = utcnow()
        db.session.commit()


def parse_fallback_text(raw: str) -> tuple[Any, str | None]:
    """A fallback response typed as JSON text: (value, error). Empty text is no fallback (None)."""
    text = (raw or "").strip()
    if len(text.encode()) > FALLBACK_LIMIT:
        return None, f"Keep the fallback response under {FALLBACK_LIMIT // 1024} KiB."
    if not text:
        return None, None
    try:
        return json.loads(text), None
    except ValueError as exc:
        return None, f"Not valid JSON: {exc}."


def validate_settings(data: dict[str, Any], cb: Callback) -> tuple[dict[str, Any], dict[str, str]]:
    """Check priority, failure policy and fallback response (a JSON value); return (clean, errors)."""
    clean: dict[str, Any] = {}
    errors: dict[str, str] = {}
    if "failure_policy" in data:
        if data["failure_policy"] not in POLICIES:
            errors["failure_policy"] = "Choose fail or fallback."
        else:
            clean["failure_policy"] = data["failure_policy"]
    if "fallback_response" in data:
        value = data["fallback_response"]
        if len(json.dumps(value).encode()) > FALLBACK_LIMIT:
            errors["fallback_response"] = f"Keep the fallback response under {FALLBACK_LIMIT // 1024} KiB."
        else:
            clean["fallback_response"] = value
    if "priority" in data:
        priority = data["priority"]
        low, high = PRIORITY_RANGE
        if isinstance(priority, bool) or not isinstance(priority, int) or not low <= priority <= high:
            errors["priority"] = f"Enter a whole number from {low} to {high}."
        else:
            clean["priority"] = priority
    policy = clean.get("failure_policy", cb.failure_policy)
    fallback = clean["fallback_response"] if "fallback_response" in clean else cb.fallback_response
    if (
        policy == FALLBACK
        and fallback is None
        and not errors.keys() & {"failure_policy", "fallback_response"}
    ):
        errors["fallback_response"] = "The fallback policy needs a JSON response to return (for example {})."
    return clean, errors


def apply_settings(cb: Callback, clean: dict[str, Any]) -> dict[str, Any]:
    """Set the checked values; return {field: [old, new]} for the audit log."""
    changes: dict[str, Any] = {}
    for name, value in clean.items():
        if getattr(cb, name) != value:
            changes[name] = [getattr(cb, name), value]
            setattr(cb, name, value)
    return changes


def outcome_of(d: Delivery, cb: Callback) -> Result:
    """An invocation of one callback rebuilt from its logged delivery (for "Call now" without JS)."""
    attempt = d.attempts[-1] if d.attempts else None
    tried = Tried(cb.id, d.id, skipped=attempt is None)
    if attempt is not None:
        tried.status, tried.error_class = attempt.status_code, attempt.error_class
        tried.duration_ms = attempt.duration_ms
        tried.message = d.status_detail or "" if attempt.error_class else ""
    else:
        tried.error_class, tried.message = CIRCUIT_OPEN, d.status_detail or "not called"
    if attempt is not None and attempt.error_class is None:
        response = delivery.transport.Response(
            url=attempt.url,
            started_monotonic=0.0,
            duration_ms=attempt.duration_ms,
            status_code=attempt.status_code,
            headers=attempt.response_headers or {},
            body=attempt.response_excerpt or b"",
            body_size=attempt.response_size,
            truncated=attempt.response_truncated,
        )
        return _answered(tried, response, [tried], attempt.duration_ms)
    return _failed([_link(cb)], [tried], tried.duration_ms)


def run_deferred(app: Flask, pending: list[Finalizer]) -> None:
    """Record deferred calls in their own app context (after the response was sent)."""
    with app.app_context():
        try:
            for record in pending:
                try:
                    record()
                    db.session.commit()
                except Exception:  # noqa: BLE001 - one failed record must not lose the others
                    db.session.rollback()
                    logging.getLogger("cbdash").exception("recording a sync invocation failed")
        finally:
            db.session.remove()
