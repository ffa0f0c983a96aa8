"""gunicorn's server hooks for this app: metrics directory, background greenlets, shutdown.

``gunicorn.conf.py`` loads this file by its path and takes the hooks from it. It runs in
the master before any worker has forked and before gevent patches the standard library,
so nothing here imports the app (or anything that imports it) at module level: the
imports happen inside the hooks that run in a worker.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from typing import Any


def prepare_metrics_dir() -> None:
    """A fresh PROMETHEUS_MULTIPROC_DIR before anything imports prometheus_client.

    Every worker writes its metrics there and /metrics sums them. Runs when the config is
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


def post_fork(server: Any, worker: Any) -> None:
    quit_once(worker)


def post_worker_init(worker: Any) -> None:
    """Start this worker's hub, batcher and relay after fork, and end streams on SIGTERM."""
    from app import start_background, watch_worker_exit

    tune_gc()
    start_background(worker.wsgi)
    watch_worker_exit(worker.wsgi, lambda: worker.alive)


def worker_exit(server: Any, worker: Any) -> None:
    """Finish the outbox clean-up of this worker's last publishes before it goes."""
    worker.leaving = True  # a quick-shutdown exit still pending must not break this off
    if getattr(worker, "wsgi", None) is not None:
        from app import drain_background

        drain_background(worker.wsgi)


def child_exit(server: Any, worker: Any) -> None:
    """A dead worker's live gauges (open connections) must stop counting."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def on_exit(server: Any) -> None:
    path = os.environ.get("NOTIFY_METRICS_TMP")
    if path:
        shutil.rmtree(path, ignore_errors=True)


def quit_once(worker: Any) -> None:
    """Quick shutdown (SIGINT, SIGQUIT) that does not cut the exit short or print a traceback.

    gunicorn's gevent worker answers each such signal with ``sys.exit(0)`` from a greenlet
    0.1 s later. By then the worker may already be on its way out: the signal also ended
    its main loop, and Ctrl-C in a terminal sends two signals (SIGINT from the terminal,
    SIGQUIT from the master). A late exit is thrown into whatever the worker is doing then:
    ``worker_exit``'s outbox flush, or the interpreter's shutdown, where gevent prints it as
    a traceback (at every Ctrl-C tried). So only the first signal is answered, and its exit
    is skipped once the worker is leaving.
    """
    import gevent

    quitting = False

    def quit_now() -> None:
        worker.alive = False
        worker.cfg.worker_int(worker)
        gevent.sleep(0.1)
        if not getattr(worker, "leaving", False):
            sys.exit(0)

    def once(sig: int, frame: Any) -> None:
        nonlocal quitting
        if not quitting:
            quitting = True
            gevent.spawn(quit_now)

    worker.handle_quit = once  # gunicorn's init_signals, after this, installs it for both


def tune_gc() -> None:
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
