"""gunicorn.conf.py: settings, and the hooks of app/ops/gunicorn_hooks.py, without the app."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.support import ROOT

LOAD = """
import json, runpy, sys
settings = runpy.run_path("gunicorn.conf.py")
print(json.dumps({
    "app_imported": sorted(m for m in sys.modules if m == "app" or m.startswith("app.")),
    "hooks": {k: settings[k].__module__ for k in
              ("post_fork", "post_worker_init", "worker_exit", "child_exit", "on_exit")},
    "worker_class": settings["worker_class"], "bind": settings["bind"],
}))
"""


def test_the_master_loads_the_hooks_without_importing_the_app(tmp_path: Path) -> None:
    """gevent patches the standard library in each worker after fork; a master that had
    imported the app (redis, pymongo, threading users) would fork them unpatched."""
    env = {**os.environ, "HOST": "127.0.0.1", "PORT": "8123", "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-c", LOAD],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    loaded = json.loads(done.stdout)
    assert loaded["app_imported"] == []
    assert set(loaded["hooks"].values()) == {"notify_gunicorn_hooks"}  # app/ops/gunicorn_hooks.py
    assert loaded["worker_class"] == "gevent" and loaded["bind"] == "127.0.0.1:8123"
