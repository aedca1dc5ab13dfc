"""Built-in catalogue of common definition names, with descriptions and sample payloads."""

from __future__ import annotations

from typing import Any

CATALOGUE: dict[str, dict[str, Any]] = {
    "redirect_cart_payment": {
        "description": "Asks the payment gateway where to send the shopper to pay for a cart "
        "(synchronous: the answer is awaited).",
        "sync": True,
        "sample": {
            "cart_id": "cart_1042",
            "amount": "129.90",
            "currency": "EUR",
            "return_url": "https://shop.example/checkout/return",
        },
    },
    "payment.confirmed": {
        "description": "A payment gateway confirmed a payment.",
        "sample": {"order_id": "ord_1042", "amount": "129.90", "currency": "EUR"},
    },
    "order.created": {
        "description": "An order was placed.",
        "sample": {
            "order_id": "ord_1042",
            "customer_id": "cus_77",
            "total": "129.90",
            "currency": "EUR",
            "lines": [{"sku": "TSHIRT-M", "quantity": 2, "price": "29.95"}],
        },
    },
    "order.paid": {
        "description": "An order was paid in full.",
        "sample": {"order_id": "ord_1042", "paid_at": "2025-06-19T12:48:00Z"},
    },
    "order.cancelled": {
        "description": "An order was cancelled.",
        "sample": {"order_id": "ord_1042", "reason": "customer_request"},
    },
    "inventory.updated": {
        "description": "Stock level of a product changed (inventory management sync).",
        "sample": {"sku": "TSHIRT-M", "warehouse": "main", "quantity": 41},
    },
    "customer.created": {
        "description": "A customer account was created (CRM update).",
        "sample": {"customer_id": "cus_77", "email": "ada@example.com", "name": "Ada L."},
    },
    "customer.updated": {
        "description": "A customer's details changed (CRM update).",
        "sample": {"customer_id": "cus_77", "changed": ["email"]},
    },
    "newsletter.subscribed": {
        "description": "A shopper subscribed to the newsletter (e-mail marketing).",
        "sample": {"email": "ada@example.com", "list": "weekly"},
    },
    "shipment.status_updated": {
        "description": "A shipping carrier reported a new parcel status.",
        "sample": {"order_id": "ord_1042", "carrier": "dhl", "status": "in_transit"},
    },
    "analytics.daily_report": {
        "description": "Daily sales figures for analytics and reporting feeds.",
        "sample": {"date": "2025-06-19", "orders": 312, "revenue": "18420.50"},
    },
    "test_callback_system": {
        "description": "System testing and validation callback for development and QA.",
        "sample": {"message": "Hello from cbdash", "check": "connectivity"},
    },
}


def sample_payload(definition: str) -> dict[str, Any]:
    """The catalogue's sample payload, or a generic one for custom definitions."""
    entry = CATALOGUE.get(definition)
    if entry:
        return dict(entry["sample"])
    return {"message": f"Test ping for {definition}"}


def describe(definition: str) -> str:
    entry = CATALOGUE.get(definition)
    return entry["description"] if entry else ""
