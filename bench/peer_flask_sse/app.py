"""The peer for the side-by-side benchmark: a minimal Flask-SSE app, as its docs show it.

Served the way Flask-SSE's documentation says (gunicorn with gevent workers):

    gunicorn app:app --worker-class gevent --bind 127.0.0.1:8000

Clients stream ``/stream?channel=<user>``; ``POST /publish`` with ``{"user_id"|"user_ids",
"data"}`` publishes ``data`` as a ``notification`` event on each user's channel. Flask-SSE
stores nothing and subscribes one Redis connection per client: that is the comparison.
"""

import os

from flask import Flask, jsonify, request
from flask_sse import sse

app = Flask(__name__)
app.config["REDIS_URL"] = os.environ.get("REDIS_URL", "redis://127.0.0.1:6390/0")
app.register_blueprint(sse, url_prefix="/stream")


@app.get("/healthz")
def healthz():
    return jsonify(status="ok")


@app.post("/publish")
def publish():
    body = request.get_json(force=True)
    users = body.get("user_ids") or [body["user_id"]]
    for user in users:
        sse.publish(body.get("data"), type="notification", channel=user)
    return jsonify(published=len(users)), 201
