"""gunicorn settings for production: gevent workers holding many long-lived streams."""

import os

bind = f"{os.environ.get('HOST', '0.0.0.0')}:{os.environ.get('PORT', '8000')}"
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
worker_class = "gevent"
# Every open SSE/WebSocket stream holds one slot; the default of 1000 is far too low.
worker_connections = int(os.environ.get("WORKER_CONNECTIONS", "20000"))
# Streams are closed by the app on shutdown; requests get this long to finish.
graceful_timeout = int(os.environ.get("GRACEFUL_TIMEOUT", "10"))
timeout = int(os.environ.get("WORKER_TIMEOUT", "30"))
keepalive = 5
accesslog = os.environ.get("ACCESS_LOG") or None
errorlog = "-"
loglevel = os.environ.get("LOG_LEVEL", "info")
proc_name = "notify"


def post_worker_init(worker):
    """Start this worker's hub, batcher and relay after fork, and end streams on SIGTERM."""
    from app import start_background, watch_worker_exit

    start_background(worker.wsgi)
    watch_worker_exit(worker.wsgi, lambda: worker.alive)
control_socket_disable = True  # one control socket per host would be shared by every instance
