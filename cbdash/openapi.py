"""The OpenAPI document served at /api/v1/openapi.json."""

from __future__ import annotations

from typing import Any

from .constants import DeliveryKind, DeliveryStatus

ERROR = {"$ref": "#/components/schemas/Error"}
_WINDOW = {"name": "window", "in": "query", "schema": {"type": "string", "enum": ["1h", "24h", "7d"]}}


def _resp(description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"description": description}
    if schema is not None:
        body["content"] = {"application/json": {"schema": schema}}
    return body


def _errors(*codes: int) -> dict[str, Any]:
    text = {
        400: "Bad input",
        401: "Missing or invalid token",
        403: "Role not allowed",
        404: "Not found",
        409: "Conflict",
        413: "Payload too large",
    }
    return {str(c): _resp(text[c], ERROR) for c in codes}


def _id_param(name: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "integer"}}


def _query(name: str, schema: dict[str, Any], description: str = "") -> dict[str, Any]:
    param = {"name": name, "in": "query", "schema": schema}
    return {**param, "description": description} if description else param


UNKNOWN_PARAMS = "Bad input, including a query parameter this endpoint does not take (named in the error)"


def document(payload_limit: int) -> dict[str, Any]:
    """The API contract (SPEC §5)."""
    callback_props = {
        "definition": {"type": "string", "pattern": "^[a-z0-9_.-]{3,100}$"},
        "url": {"type": "string", "format": "uri"},
        "timeout": {"type": "integer", "minimum": 1},
        "active": {"type": "boolean"},
        "description": {"type": "string"},
        "headers": {"type": "object", "additionalProperties": {"type": "string"}},
        "retry_schedule": {"type": "string", "example": "5,300,1800"},
    }
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "cbdash API",
            "version": "1.0.0",
            "description": "Trigger events and manage callbacks. Bearer token auth.",
        },
        "servers": [{"url": "/api/v1"}],
        "security": [{"bearer": []}],
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Error": {
                    "type": "object",
                    "properties": {
                        "error": {
                            "type": "object",
                            "properties": {
                                "code": {"type": "string"},
                                "message": {"type": "string"},
                                "fields": {
                                    "type": "object",
                                    "additionalProperties": {"type": "string"},
                                },
                            },
                        }
                    },
                },
                "CallbackInput": {
                    "type": "object",
                    "properties": {
                        **callback_props,
                        "status": {
                            "type": "string",
                            "enum": ["active", "inactive"],
                            "description": "Instead of active (not both); errors are reported under status",
                        },
                    },
                    "additionalProperties": False,
                },
                "Callback": {
                    "type": "object",
                    "properties": {
                        "id": {"type": "integer"},
                        **callback_props,
                        "status": {"type": "string", "enum": ["active", "inactive"]},
                        "inactive_reason": {"type": "string", "nullable": True},
                        "health": {"type": "string", "enum": ["healthy", "failing", "disabled"]},
                        "secret": {
                            "type": "string",
                            "description": "Masked. The full secret is in the create answer only, and at "
                            "GET /callbacks/{id}/secret",
                        },
                        "created_at": {"type": "string", "format": "date-time"},
                    },
                },
                "CallbackCreated": {
                    "allOf": [
                        {"$ref": "#/components/schemas/Callback"},
                        {
                            "type": "object",
                            "properties": {
                                "secret": {
                                    "type": "string",
                                    "description": "The full signing secret, shown only in this response: "
                                    "store it to verify the webhook-signature header. Later answers mask "
                                    "it; GET /callbacks/{id}/secret shows it again (admin tokens, "
                                    "audit-logged).",
                                }
                            },
                        },
                    ]
                },
                "Delivery": {
                    "type": "object",
                    "properties": {
                        "id": {"type": "integer"},
                        "webhook_id": {"type": "string"},
                        "event_id": {"type": "string"},
                        "callback_id": {"type": "integer"},
                        "kind": {
                            "type": "string",
                            "enum": [k.value for k in DeliveryKind],
                        },
                        "status": {
                            "type": "string",
                            "enum": [
                                "pending",
                                "sending",
                                "retrying",
                                "succeeded",
                                "failed",
                                "skipped",
                            ],
                        },
                        "attempts": {"type": "integer"},
                        "next_attempt_at": {
                            "type": "string",
                            "format": "date-time",
                            "nullable": True,
                        },
                        "created_at": {"type": "string", "format": "date-time"},
                    },
                },
            },
        },
        "paths": {
            "/events": {
                "post": {
                    "summary": "Trigger an event; it fans out to every active callback of its "
                    f"definition. Body limit {payload_limit} bytes.",
                    "parameters": [
                        {
                            "name": "Idempotency-Key",
                            "in": "header",
                            "required": False,
                            "schema": {"type": "string", "maxLength": 255},
                            "description": "Names one request. Repeating it with the same definition "
                            "and payload returns the first result (idempotent_replay: true) and creates "
                            "nothing; with a different definition or payload the answer is 409 "
                            "idempotency_key_reused and nothing is created.",
                        }
                    ],
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "required": ["definition", "payload"],
                                    "additionalProperties": False,
                                    "properties": {"definition": {"type": "string"}, "payload": {}},
                                }
                            }
                        },
                    },
                    "responses": {
                        "202": _resp(
                            "Accepted",
                            {
                                "type": "object",
                                "properties": {
                                    "event_id": {"type": "string"},
                                    "definition": {"type": "string"},
                                    "delivery_ids": {"type": "array", "items": {"type": "integer"}},
                                    "idempotent_replay": {
                                        "type": "boolean",
                                        "description": "Present (true) when this is the first result of a "
                                        "repeated Idempotency-Key",
                                    },
                                },
                            },
                        ),
                        **_errors(400, 401, 403, 413),
                        "409": _resp(
                            "idempotency_key_reused: the Idempotency-Key was used before with a different "
                            "definition or payload; nothing was created",
                            ERROR,
                        ),
                    },
                }
            },
            "/callbacks": {
                "get": {
                    "summary": "List callbacks",
                    "parameters": [
                        _query("status", {"type": "string", "enum": ["all", "active", "inactive"]}, "Tab"),
                        _query("q", {"type": "string"}, "Search in definition names and URLs"),
                        _query("page", {"type": "integer", "minimum": 1}, "Page number"),
                        _query("per_page", {"type": "integer", "minimum": 1, "maximum": 200}, "Page size"),
                    ],
                    "responses": {
                        "200": _resp("Callbacks"),
                        "400": _resp(UNKNOWN_PARAMS, ERROR),
                        **_errors(401),
                    },
                },
                "post": {
                    "summary": "Create a callback",
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {"schema": {"$ref": "#/components/schemas/CallbackInput"}}
                        },
                    },
                    "responses": {
                        "201": _resp(
                            "Created; the only answer with the full signing secret",
                            {"$ref": "#/components/schemas/CallbackCreated"},
                        ),
                        **_errors(400, 401, 403),
                    },
                },
            },
            "/callbacks/{id}": {
                "parameters": [_id_param("id")],
                "get": {
                    "summary": "Get a callback",
                    "responses": {
                        "200": _resp("Callback", {"$ref": "#/components/schemas/Callback"}),
                        **_errors(401, 404),
                    },
                },
                "patch": {
                    "summary": "Update a callback",
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {"schema": {"$ref": "#/components/schemas/CallbackInput"}}
                        },
                    },
                    "responses": {"200": _resp("Updated"), **_errors(400, 401, 403, 404)},
                },
                "delete": {
                    "summary": "Delete a callback",
                    "responses": {"204": _resp("Deleted"), **_errors(401, 403, 404)},
                },
            },
            "/callbacks/{id}/ping": {
                "parameters": [_id_param("id")],
                "post": {
                    "summary": "Send a test ping",
                    "responses": {
                        "202": _resp("Queued", {"$ref": "#/components/schemas/Delivery"}),
                        **_errors(401, 403, 404),
                    },
                },
            },
            "/callbacks/{id}/secret": {
                "parameters": [_id_param("id")],
                "get": {
                    "summary": "The signing secret in full, and the previous one while it still signs "
                    "alongside after a rotation (tokens whose role may reveal secrets; audit-logged)",
                    "responses": {
                        "200": _resp(
                            "Secret",
                            {
                                "type": "object",
                                "properties": {
                                    "secret": {"type": "string"},
                                    "previous_secret": {"type": "string", "nullable": True},
                                    "previous_secret_expires_at": {
                                        "type": "string",
                                        "format": "date-time",
                                        "nullable": True,
                                    },
                                },
                            },
                        ),
                        **_errors(401, 403, 404),
                    },
                },
            },
            "/callbacks/{id}/rotate-secret": {
                "parameters": [_id_param("id")],
                "post": {
                    "summary": "Rotate the signing secret (the old one signs alongside for the "
                    "overlap period)",
                    "responses": {"200": _resp("Rotated"), **_errors(401, 403, 404)},
                },
            },
            "/callbacks/{id}/stats": {
                "parameters": [_id_param("id")],
                "get": {
                    "summary": "Success rate, latency percentiles and failure reasons of one callback",
                    "parameters": [_WINDOW],
                    "responses": {"200": _resp("Stats"), **_errors(400, 401, 404)},
                },
            },
            "/callbacks/{id}/breaker": {
                "parameters": [_id_param("id")],
                "get": {
                    "summary": "Circuit breaker state (closed, open, half_open), since when and why",
                    "responses": {"200": _resp("Breaker"), **_errors(401, 404)},
                },
            },
            "/callbacks/{id}/breaker/reset": {
                "parameters": [_id_param("id")],
                "post": {
                    "summary": "Close the circuit breaker (admin)",
                    "responses": {"200": _resp("Breaker"), **_errors(401, 403, 404)},
                },
            },
            "/callbacks/{id}/sync": {
                "parameters": [_id_param("id")],
                "get": {
                    "summary": "Synchronous settings: priority, failure policy, fallback",
                    "responses": {"200": _resp("Sync settings"), **_errors(401, 404)},
                },
                "patch": {
                    "summary": "Change priority, failure policy (fail|fallback) or fallback",
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "properties": {
                                        "priority": {"type": "integer"},
                                        "failure_policy": {"type": "string", "enum": ["fail", "fallback"]},
                                        "fallback_response": {},
                                    },
                                }
                            }
                        },
                    },
                    "responses": {"200": _resp("Updated"), **_errors(400, 401, 403, 404)},
                },
            },
            "/definitions/{name}/invoke": {
                "parameters": [
                    {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}
                ],
                "post": {
                    "summary": "Call the active callback(s) of a definition now and return the answer",
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "required": ["payload"],
                                    "additionalProperties": False,
                                    "properties": {"payload": {}, "timeout": {"type": "number"}},
                                }
                            }
                        },
                    },
                    "responses": {
                        "200": _resp(
                            "The receiver's answer (or the configured fallback)",
                            {
                                "type": "object",
                                "properties": {
                                    "status": {"type": "integer"},
                                    "body": {},
                                    "duration_ms": {"type": "number"},
                                    "callback_id": {"type": "integer"},
                                    "delivery_id": {"type": "integer"},
                                    "fallback": {"type": "boolean"},
                                },
                            },
                        ),
                        "502": _resp("No receiver answered usably", ERROR),
                        "504": _resp("The receiver did not answer in time", ERROR),
                        **_errors(400, 401, 403, 404, 413),
                    },
                },
            },
            "/stats": {
                "get": {
                    "summary": "Deliveries, success rate, p50/p95/p99 latency, failure reasons, queue state",
                    "parameters": [_WINDOW],
                    "responses": {"200": _resp("Stats"), **_errors(400, 401)},
                }
            },
            "/deliveries": {
                "get": {
                    "summary": "List deliveries, newest first",
                    "parameters": [
                        _query("callback_id", {"type": "integer"}, "Deliveries of one callback"),
                        _query("status", {"type": "string", "enum": [s.value for s in DeliveryStatus]}),
                        _query("kind", {"type": "string", "enum": [k.value for k in DeliveryKind]}),
                        _query("limit", {"type": "integer", "minimum": 1, "maximum": 500}, "Page size"),
                        _query("before_id", {"type": "integer"}, "Older than this id (next_before_id)"),
                    ],
                    "responses": {
                        "200": _resp("Deliveries"),
                        "400": _resp(UNKNOWN_PARAMS, ERROR),
                        **_errors(401),
                    },
                }
            },
            "/deliveries/{id}": {
                "parameters": [_id_param("id")],
                "get": {
                    "summary": "A delivery with its attempts",
                    "responses": {"200": _resp("Delivery"), **_errors(401, 404)},
                },
            },
            "/deliveries/{id}/redeliver": {
                "parameters": [_id_param("id")],
                "post": {
                    "summary": "Send the same message again (same webhook-id)",
                    "responses": {"202": _resp("Queued"), **_errors(401, 403, 404)},
                },
            },
        },
    }
