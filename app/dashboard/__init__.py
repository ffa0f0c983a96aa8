"""The support dashboard: staff sign in, watch the service and one user's notifications live.

``init_app`` wires it into an app: the per-worker presence reporter (started later with
the other background greenlets), the dashboard service and the ``dashboard`` blueprint.
Nothing here connects to a server; the bootstrap admin account is created on the first
dashboard request.
"""

from __future__ import annotations

from flask import Blueprint, Flask

from ..presence import Presence
from .service import DashboardService

bp = Blueprint("dashboard", __name__, url_prefix="/dashboard")


def init_app(app: Flask) -> None:
    presence = Presence(app.extensions["config"], app.extensions["redis"], app.extensions["hub"])
    app.extensions["presence"] = presence
    app.extensions["dashboard"] = DashboardService(app.extensions["notifications"], presence)
    app.extensions["dashboard_bootstrapped"] = False
    from . import views  # noqa: F401  (registers the routes on bp)

    app.register_blueprint(bp)
