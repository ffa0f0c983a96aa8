"""The ``demo`` blueprint: ``GET /demo``, a page that shows one subscriber's notifications live.

The page is static apart from the transport choice; the token is read by the browser from the
form or ``?token=`` and never rendered by the server. The strict CSP (app/access/headers.py:
scripts and styles only from this origin) backs up the page's rule of writing user data with
``textContent`` only, and ``no-referrer`` keeps a token in the address bar from leaking to other sites.
"""

from __future__ import annotations

from flask import Blueprint, Response, make_response, render_template, request

bp = Blueprint("demo", __name__)


@bp.get("/demo")
def demo() -> Response:
    transport = request.args.get("transport", "sse")
    resp = make_response(render_template("demo.html", transport="ws" if transport == "ws" else "sse"))
    resp.headers["Referrer-Policy"] = "no-referrer"
    resp.headers["Cache-Control"] = "no-store"
    return resp
