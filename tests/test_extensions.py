"""app/extensions.py: how the app binds MongoDB."""

from __future__ import annotations

from pymongo import ReadPreference

from app.store.models import notifications_collection


def test_reads_go_to_the_primary_whatever_the_uri_asks(make_app, stack):
    """A replay from a lagging secondary would skip notifications a 201 answered for."""
    app = make_app(MONGO_URI=stack.mongo_uri + "?readPreference=secondaryPreferred")
    with app.app_context():
        assert notifications_collection().read_preference == ReadPreference.PRIMARY


def test_only_the_read_preference_leaves_the_uri():
    from app.extensions import primary_only

    uri = "mongodb://h1,h2/db?replicaSet=rs0&readPreference=nearest&maxStalenessSeconds=90&w=majority"
    assert primary_only(uri) == "mongodb://h1,h2/db?replicaSet=rs0&w=majority"
    assert primary_only("mongodb://h1/db") == "mongodb://h1/db"
