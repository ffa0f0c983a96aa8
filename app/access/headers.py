"""Security headers on every response, set in one place.

``X-Content-Type-Options: nosniff`` on every response (JSON, streams and static files
included), so a browser never runs a response as a type it guessed. Every HTML response
gets a Content-Security-Policy that forbids framing (``frame-ancestors 'none'``):
``CSP`` unless the view chose a stricter one (the API docs), which still gets the framing
rule. Error pages (a 404 under ``/dashboard`` matches no blueprint) are covered too,
because the hook is the app's, not a blueprint's.
"""

from __future__ import annotations

from flask import Flask, Response

NOSNIFF = ("X-Content-Type-Options", "nosniff")
NO_FRAMING = "frame-ancestors 'none'"
# Scripts, styles and connections from this origin only: pages write user data as text.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    f"connect-src 'self'; base-uri 'none'; form-action 'self'; {NO_FRAMING}"
)


def init_app(app: Flask) -> None:
    app.after_request(secure_headers)


def secure_headers(resp: Response) -> Response:
    resp.headers.setdefault(*NOSNIFF)
    if resp.mimetype == "text/html":
        policy = resp.headers.get("Content-Security-Policy")
        if policy is None:
            resp.headers["Content-Security-Policy"] = CSP
        elif "frame-ancestors" not in policy:
            resp.headers["Content-Security-Policy"] = f"{policy.rstrip('; ')}; {NO_FRAMING}"
    return resp
