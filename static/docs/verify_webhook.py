"""Verify a cbdash delivery in Python (Flask receiver shown; any framework works).

pip install standardwebhooks flask
"""

import os

from flask import Flask, abort, request
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

app = Flask(__name__)
# The callback's signing secret, as shown (revealed) on its page: "whsec_..."
webhook = Webhook(os.environ["CBDASH_SIGNING_SECRET"])


@app.post("/hooks/cbdash")
def receive():
    try:
        # Verify over the raw bytes: re-serialised JSON would not match the signature.
        event = webhook.verify(request.get_data(), dict(request.headers))
    except WebhookVerificationError:
        abort(400)
    # Deliveries are at-least-once: use the webhook-id header to ignore repeats.
    print(request.headers["webhook-id"], event["type"], event["data"])
    return "", 204
