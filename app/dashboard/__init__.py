"""The support dashboard: staff sign in, watch the service and one user's notifications live.

``init_app`` wires it into an app: the per-worker presence reporter (started later with
the other background greenlets), the dashboard service and the ``dashboard`` blueprint.
Nothing here connects to a server at import or in ``init_app``: the bootstrap admin
account is created by ``start_background`` (after fork, in a greenlet, retried while
MongoDB is not up yet) and, failing that, on the first dashboard request.
"""

from __future__ import annotations

import logging

import gevent
from flask import Blueprint, Flask, Request
from flask.sessions import SecureCookieSession, SecureCookieSessionInterface
from pymongo.errors import PyMongoError

from app.dashboard import staff
from app.dashboard.actions import StaffActions
from app.dashboard.service import DashboardService
from app.delivery.presence import Presence

bp = Blueprint("dashboard", __name__, url_prefix="/dashboard")
log = logging.getLogger(__name__)


class CookieOnlySessions(SecureCookieSessionInterface):
    """Flask's signed-cookie sessions, without building a signer for requests with no cookie.

    Only staff have a session; services' API calls and streams send none, and Flask would
    otherwise build an itsdangerous serializer on every one of them (~4% of a POST).
    """

    def open_session(self, app: Flask, request: Request) -> SecureCookieSession | None:
        if app.secret_key and not request.cookies.get(self.get_cookie_name(app)):
            return self.session_class()
        return super().open_session(app, request)


def init_app(app: Flask) -> None:
    app.session_interface = CookieOnlySessions()
    hub, notifications = app.extensions["hub"], app.extensions["notifications"]
    presence = Presence(app.extensions["config"], app.extensions["redis"], hub, notifications.receipts)
    hub.on_disconnect.append(presence.refresh_soon)
    app.extensions["presence"] = presence
    app.extensions["dashboard"] = DashboardService(notifications, presence)
    checker = app.extensions.get("api_key_checker")
    app.extensions["staff_actions"] = StaffActions(notifications, presence, checker)
    app.extensions["dashboard_bootstrapped"] = False
    from app.dashboard import console_views, views  # noqa: F401  (register the routes on bp)

    app.register_blueprint(bp)


def start_background(app: Flask) -> None:
    """This worker's presence reporter, and the admin account bootstrap."""
    app.extensions["presence"].start()
    gevent.spawn(bootstrap_admin, app, 5)


def bootstrap_admin(app: Flask, attempts: int = 1) -> None:
    """Create ADMIN_USERNAME if missing (idempotent, any number of workers at once)."""
    for attempt in range(attempts):
        if app.extensions.get("dashboard_bootstrapped"):
            return
        try:
            staff.ensure_admin(app.extensions["config"])
            app.extensions["dashboard_bootstrapped"] = True
            return
        except PyMongoError as exc:
            log.warning("could not bootstrap the admin account yet: %s", exc)
            if attempt + 1 < attempts:
                gevent.sleep(2.0 * (attempt + 1))
