"""gunicorn settings for bench/memprobe.py: the real gunicorn.conf.py plus a tracemalloc dump.

When ``<MEMPROBE_DIR>/snap-<pid>`` appears, the worker writes a tracemalloc snapshot
to ``<MEMPROBE_DIR>/<name>-<pid>.snap`` (name = the trigger file's content) and removes
the trigger. Only used by the probe; production never loads this file.
"""

import os
import runpy
import tracemalloc
from pathlib import Path

_here = Path(__file__).resolve().parent.parent / "gunicorn.conf.py"
_settings = runpy.run_path(str(_here))  # the real settings (run with their own __file__)
globals().update({k: v for k, v in _settings.items() if not k.startswith("__")})

_post_worker_init = post_worker_init  # noqa: F821 - defined by the exec above


def post_worker_init(worker):  # noqa: F811
    _post_worker_init(worker)
    import gc

    import gevent

    folder = Path(os.environ["MEMPROBE_DIR"])
    if os.environ.get("MEMPROBE_TRACE") == "1":
        tracemalloc.start(int(os.environ.get("MEMPROBE_FRAMES", "12")))

    def watch():
        trigger = folder / f"snap-{os.getpid()}"
        while True:
            gevent.sleep(0.2)
            if trigger.exists():
                name = trigger.read_text().strip() or "snap"
                gc.collect()
                if tracemalloc.is_tracing():
                    tracemalloc.take_snapshot().dump(str(folder / f"{name}-{os.getpid()}.snap"))
                (folder / f"{name}-{os.getpid()}.done").write_text("")
                trigger.unlink()

    gevent.spawn(watch)
