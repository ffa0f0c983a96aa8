"""The app's error handlers (app/errors.py): what a view that did not handle an error answers."""

from __future__ import annotations

import pytest
from pymongo.errors import AutoReconnect, NetworkTimeout, OperationFailure


@pytest.mark.parametrize(
    ("error", "status", "code"),
    [
        (NetworkTimeout("timed out"), 503, "unavailable"),  # MONGO_OP_TIMEOUT_MS passed
        (AutoReconnect("connection closed"), 503, "unavailable"),  # the server went away
        (OperationFailure("unknown operator: $nope", 2), 500, "internal_error"),  # a bug of ours
    ],
    ids=["timeout", "connection", "refused"],
)
def test_a_database_error_no_view_handled(make_app, error, status, code):
    app = make_app()

    @app.get("/fails")
    def fails():
        raise error

    resp = app.test_client().get("/fails")
    assert resp.status_code == status
    assert resp.get_json()["error"]["code"] == code
