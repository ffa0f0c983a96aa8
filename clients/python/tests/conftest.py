"""The client's tests run against the service's real servers: the suite's fixtures."""

from tests.conftest import *  # noqa: F403
