"""The ``demo`` blueprint: the landing page ``/``, ``/favicon.ico`` and ``GET /demo``.

``/`` links what a newcomer looks for (dashboard, API docs, demo). ``/demo`` shows one
subscriber's notifications live; the token is read by the browser from the form or
``?token=`` and never rendered by the server. In development the page can also ask
``POST /demo/token`` for a subscriber token itself (that route does not exist in any other
``APP_ENV``). The strict CSP (app/access/headers.py: scripts and styles only from this
origin) backs up the page's rule of writing user data with ``textContent`` only, and
``no-referrer`` keeps a token in the address bar from leaking to other sites.
"""

from __future__ import annotations

from flask import Blueprint, Response, abort, current_app, make_response, render_template, request, url_for

from app.access.tokens import mint_token
from app.api import validation as v

bp = Blueprint("demo", __name__)
DEV_TOKEN_SECONDS = 3600


def _development() -> bool:
    return current_app.extensions["config"].APP_ENV == "development"


@bp.get("/")
def landing() -> str:
    return render_template("landing.html")


@bp.get("/favicon.ico")
def favicon() -> Response:
    return current_app.send_static_file("favicon.ico")


@bp.get("/notify-sw.js")
def push_worker() -> Response:
    """The Web Push service worker (static/notify-sw.js), at the root so it may control
    the whole origin; pages of another origin serve a copy from their own."""
    resp = current_app.send_static_file("notify-sw.js")
    resp.headers["Service-Worker-Allowed"] = "/"
    resp.headers["Cache-Control"] = "no-cache"
    return resp


@bp.get("/demo")
def demo() -> Response:
    transport = request.args.get("transport", "sse")
    dev_token_url = url_for("demo.dev_token") if _development() else ""
    transport = "ws" if transport == "ws" else "sse"
    resp = make_response(render_template("demo.html", transport=transport, dev_token_url=dev_token_url))
    resp.headers["Referrer-Policy"] = "no-referrer"
    resp.headers["Cache-Control"] = "no-store"
    return resp


@bp.post("/demo/token")
def dev_token() -> Response:
    """Development only: a subscriber token for the demo page, without curl and an API key.

    A JSON body is required, so a form on another site cannot post here (its JSON would
    need a CORS preflight, which this route never grants)."""
    if not _development():
        abort(404)
    body = v.json_body()
    user_id = v.user_id(body.get("user_id"))
    token, _expires = mint_token(user_id, DEV_TOKEN_SECONDS)
    resp = make_response({"token": token, "user_id": user_id}, 201)
    resp.headers["Cache-Control"] = "no-store"
    return resp
