"""Users' notification preferences (issue 22): the model (``model.py``), MongoDB and the
per-worker cache (``store.py``), and the API (``views.py``). ``app.extensions
["preferences"]`` is the ``PreferenceService`` the publisher and the push sender consult."""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask
from pymongo.errors import PyMongoError

from app.api import validation as v
from app.errors import ApiError
from app.preferences import store
from app.preferences.model import DEFAULTS, FieldInvalid, Preferences, parse

__all__ = ["DEFAULTS", "PreferenceService", "Preferences", "init_app"]

log = logging.getLogger(__name__)


class PreferenceService:
    def __init__(self, ttl: float, timeout: float) -> None:
        self.cache = store.PreferenceCache(ttl, timeout)

    def read(self, user_id: str) -> dict[str, Any]:
        try:
            return store.load(user_id).to_json()
        except PyMongoError as exc:
            log.error("MongoDB unavailable for preferences: %s", exc)
            raise ApiError(503, "unavailable", "the preference store is unavailable, retry later") from None

    def replace(self, user_id: str, body: Any) -> dict[str, Any]:
        """Validate and store ``body`` as all of ``user_id``'s preferences; 422 names the field."""
        try:
            prefs = parse(body)
        except FieldInvalid as exc:
            raise v.invalid(exc.field, exc.message) from None
        try:
            store.save(user_id, prefs)
        except PyMongoError as exc:
            log.error("MongoDB unavailable for preferences: %s", exc)
            raise ApiError(503, "unavailable", "the preference store is unavailable, retry later") from None
        self.cache.invalidate(user_id)
        return prefs.to_json()


def init_app(app: Flask) -> None:
    from app.preferences import views

    config = app.extensions["config"]
    service = PreferenceService(config.PREFERENCES_CACHE_SECONDS, config.MONGO_OP_TIMEOUT_MS / 1000)
    app.extensions["preferences"] = service
    app.extensions["notifications"].publisher.preferences = service.cache
    app.register_blueprint(views.bp)
