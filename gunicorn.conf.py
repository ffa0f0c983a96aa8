"""gunicorn settings for production: gevent workers holding many long-lived streams.

The hooks live in app/ops/gunicorn_hooks.py. It is loaded by its path, not imported as
``app.ops.gunicorn_hooks``: importing it would import the app package in the master,
before gevent patches the standard library in each worker.
"""

import importlib.util
import os

_spec = importlib.util.spec_from_file_location(
    "notify_gunicorn_hooks",
    os.path.join(os.path.dirname(os.path.abspath(__file__)), "app/ops/gunicorn_hooks.py"),
)
_hooks = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_hooks)
_hooks.prepare_metrics_dir()

bind = f"{os.environ.get('HOST', '0.0.0.0')}:{os.environ.get('PORT', '8000')}"
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
worker_class = "gevent"
# Every open SSE/WebSocket stream holds one slot; the default of 1000 is far too low.
worker_connections = int(os.environ.get("WORKER_CONNECTIONS", "20000"))
# Streams are closed by the app on shutdown; requests get this long to finish.
graceful_timeout = int(os.environ.get("GRACEFUL_TIMEOUT", "10"))
timeout = int(os.environ.get("WORKER_TIMEOUT", "30"))
# Idle keep-alive connections hold a worker open on shutdown for up to this long.
keepalive = 2
accesslog = os.environ.get("ACCESS_LOG") or None
errorlog = "-"
loglevel = os.environ.get("LOG_LEVEL", "info")
proc_name = "notify"
control_socket_disable = True  # one control socket per host would be shared by every instance

post_fork = _hooks.post_fork
post_worker_init = _hooks.post_worker_init
worker_exit = _hooks.worker_exit
child_exit = _hooks.child_exit
on_exit = _hooks.on_exit
