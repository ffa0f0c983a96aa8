"""gunicorn settings for production: gevent workers holding many long-lived streams."""

import os
import shutil
import tempfile


def _metrics_dir() -> None:
    """A fresh PROMETHEUS_MULTIPROC_DIR before anything imports prometheus_client.

    Every worker writes its metrics there and /metrics sums them. Runs when this file is
    loaded (before --preload imports the app), once per master: a SIGHUP reload keeps it.
    """
    if os.environ.get("NOTIFY_METRICS_MASTER") == str(os.getpid()):
        return
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if path:
        os.makedirs(path, exist_ok=True)
        for name in os.listdir(path):  # values of a previous run must not be added in
            if name.endswith(".db"):
                os.remove(os.path.join(path, name))
    else:
        path = tempfile.mkdtemp(prefix="notify-metrics-")
        os.environ["NOTIFY_METRICS_TMP"] = path
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = path
    os.environ["NOTIFY_METRICS_MASTER"] = str(os.getpid())


_metrics_dir()

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


def post_worker_init(worker):
    """Start this worker's hub, batcher and relay after fork, and end streams on SIGTERM."""
    from app import start_background, watch_worker_exit

    _tune_gc()
    start_background(worker.wsgi)
    watch_worker_exit(worker.wsgi, lambda: worker.alive)


def post_fork(server, worker):
    _quit_once(worker)


def _quit_once(worker) -> None:
    """Quick shutdown (SIGINT, SIGQUIT) that does not cut the exit short or print a traceback.

    gunicorn's gevent worker answers each such signal with ``sys.exit(0)`` from a greenlet
    0.1 s later. By then the worker may already be on its way out: the signal also ended
    its main loop, and Ctrl-C in a terminal sends two signals (SIGINT from the terminal,
    SIGQUIT from the master). A late exit is thrown into whatever the worker is doing then:
    ``worker_exit``'s outbox flush, or the interpreter's shutdown, where gevent prints it as
    a traceback (at every Ctrl-C tried). So only the first signal is answered, and its exit
    is skipped once the worker is leaving.
    """
    import sys

    import gevent

    quitting = False

    def quit_now() -> None:
        worker.alive = False
        worker.cfg.worker_int(worker)
        gevent.sleep(0.1)
        if not getattr(worker, "leaving", False):
            sys.exit(0)

    def once(sig, frame) -> None:
        nonlocal quitting
        if not quitting:
            quitting = True
            gevent.spawn(quit_now)

    worker.handle_quit = once  # gunicorn's init_signals, after this, installs it for both


def worker_exit(server, worker):
    """Finish the outbox clean-up of this worker's last publishes before it goes."""
    worker.leaving = True  # a quick-shutdown exit still pending must not break this off
    if getattr(worker, "wsgi", None) is not None:
        from app import drain_background

        drain_background(worker.wsgi)


def _tune_gc() -> None:
    """Keep the cyclic garbage collector's full collections off the long-lived objects.

    A worker holds thousands of streams whose objects live for hours; with CPython's
    default thresholds a full collection, which walks them all, ran every second or two
    during broadcasts and took 100-400 ms each time (bench/README.md). The objects loaded at
    start are frozen out of collection, and the oldest generation is collected far less
    often; young collections stay small, so short. ``GC_THRESHOLDS`` (three numbers, or
    ``default`` for CPython's own) changes it.
    """
    import gc

    setting = os.environ.get("GC_THRESHOLDS", "700,10,1000")
    if setting != "default":
        gc.collect()
        gc.freeze()
        gc.set_threshold(*(int(n) for n in setting.split(",")))


control_socket_disable = True  # one control socket per host would be shared by every instance


def child_exit(server, worker):
    """A dead worker's live gauges (open connections) must stop counting."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def on_exit(server):
    path = os.environ.get("NOTIFY_METRICS_TMP")
    if path:
        shutil.rmtree(path, ignore_errors=True)
