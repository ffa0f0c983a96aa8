#!/usr/bin/env python3
"""Developer entry point; needs nothing but Python 3.11.

    python3 dev.py run              # app + embedded Redis/MongoDB on http://127.0.0.1:8000
    python3 dev.py test [ARGS...]   # the test suite, in parallel processes (ARGS: one pytest)
    python3 dev.py bench [--quick]  # the benchmark vs Flask-SSE (bench/README.md)

Both create/refresh ``.venv`` from requirements-dev.txt and re-run inside it.
Only the standard library may be used until ``ensure_venv`` has re-executed us.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

if TYPE_CHECKING:
    from tools.devservers import ManagedServer

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
VENV_PY = VENV / "bin" / "python"
STAMP = VENV / ".requirements.sha256"
# Dev server data and credentials; DEV_DATA_DIR moves them (the tests use a temp dir).
DEVDATA = Path(os.environ.get("DEV_DATA_DIR") or ROOT / ".devdata")
CHROMIUM = Path("/usr/bin/chromium")
# Debian packages the tests drive: the browser tests, the nginx deploy-recipe test,
# Redis 7 (primaries, replicas and Sentinels for the failover tests) and `ip` (network
# namespaces for the test across hosts, tools/netns.py).
TEST_PACKAGES = {
    "chromium": CHROMIUM.exists,
    "nginx-light": lambda: bool(shutil.which("nginx") or Path("/usr/sbin/nginx").exists()),
    "redis-server": lambda: bool(shutil.which("redis-server") or Path("/usr/bin/redis-server").exists()),
    "iproute2": lambda: bool(shutil.which("ip") or Path("/usr/sbin/ip").exists()),
}


def say(msg: str) -> None:
    print(f"[dev] {msg}", file=sys.stderr, flush=True)


def die(msg: str, code: int = 1) -> NoReturn:
    say(f"error: {msg}")
    raise SystemExit(code)


# --- bootstrap (stdlib only) -------------------------------------------------


def ensure_venv(argv: list[str]) -> None:
    """Create .venv, pip-install when the requirements changed, re-exec inside it."""
    if sys.version_info < (3, 11):  # noqa: UP036 (may run on any python3)
        die(f"Python 3.11+ is required, this is {sys.version.split()[0]}")
    if not VENV_PY.exists():
        say("creating .venv ...")
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    digest = hashlib.sha256()
    for name in ("requirements.txt", "requirements-dev.txt"):
        digest.update((ROOT / name).read_bytes())
    wanted = digest.hexdigest()
    if not STAMP.exists() or STAMP.read_text().strip() != wanted:
        say("installing requirements-dev.txt into .venv ...")
        pip = [str(VENV_PY), "-m", "pip", "install", "-r", "requirements-dev.txt"]
        if subprocess.run(pip, cwd=ROOT, check=False).returncode != 0:
            die("pip install failed (see above)")
        STAMP.write_text(wanted + "\n")
    if Path(sys.prefix).resolve() != VENV.resolve():
        if os.environ.get("DEV_PY_REEXEC"):
            die(f"re-exec into {VENV_PY} did not land in the venv")
        os.environ["DEV_PY_REEXEC"] = "1"
        os.execv(VENV_PY, [str(VENV_PY), str(ROOT / "dev.py"), *argv])


# --- run -----------------------------------------------------------------------


class Stop(Exception):
    """Raised by our signal handler to unwind into the cleanup code."""


def _on_signal(signum: int, _frame: object) -> None:
    raise Stop(signal.Signals(signum).name)


def dev_secrets() -> tuple[dict[str, str], bool]:
    """Dev credentials from $DEV_DATA_DIR/dev.env, or new ones (and True) if there are none.

    New ones are written by ``save_dev_secrets`` only once the app answers: a start that
    fails leaves no credentials behind that no server ever used."""
    from dotenv import dotenv_values

    path = DEVDATA / "dev.env"
    if path.exists():
        return {k: v for k, v in dotenv_values(path).items() if v is not None}, False
    return {
        "SECRET_KEY": secrets.token_urlsafe(32),
        "API_KEYS": f"dev-{secrets.token_urlsafe(24)}",
        "ADMIN_USERNAME": "admin",
        "ADMIN_PASSWORD": secrets.token_urlsafe(12),
    }, True


def save_dev_secrets(values: dict[str, str]) -> None:
    path = DEVDATA / "dev.env"
    lines = "".join(f"{k}={v}\n" for k, v in values.items())
    path.write_text(f"# Generated once by dev.py for local development only; delete to regenerate.\n{lines}")
    path.chmod(0o600)


def check_data_dir() -> None:
    """DEV_DATA_DIR may be new, but its parent must exist (a typo should not make folders)."""
    if DEVDATA.exists() and not DEVDATA.is_dir():
        die(f"DEV_DATA_DIR={DEVDATA} is a file, not a folder; choose another path")
    if not DEVDATA.parent.is_dir():
        die(
            f"DEV_DATA_DIR={DEVDATA}: its parent folder {DEVDATA.parent} does not exist; "
            "create it first or choose another path"
        )


def answers(url: str) -> bool:
    """Whether the app serves ``url`` with 200 now (ready: MongoDB and Redis reachable)."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=1) as resp:  # noqa: S310 (our own local URL)
            return resp.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _cmdline(pid: int) -> list[bytes]:
    """argv of a live process; empty for zombies and processes that are gone."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[:-1]
    except OSError:
        return []


def stop_stale(name: str, data_dir: Path, port_var: str) -> None:
    """Stop a server a previous run left behind (pid file, running in our data dir).

    The working directory identifies it: redis-server rewrites its argv.
    """
    pidfile = DEVDATA / f"{name}.pid"
    try:
        pid = int(pidfile.read_text())
        cwd = Path(os.readlink(f"/proc/{pid}/cwd"))
        ppid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError):
        pidfile.unlink(missing_ok=True)
        return
    if _cmdline(pid) and cwd == data_dir.resolve():
        if any(arg.endswith(b"dev.py") for arg in _cmdline(ppid)):
            die(
                f"another `dev.py run` (pid {ppid}) is using the dev {name}; stop it "
                f"first, or set {port_var} to run a second copy"
            )
        say(f"stopping the dev {name} left over from a previous run (pid {pid})")
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while _cmdline(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if _cmdline(pid):
            os.kill(pid, signal.SIGKILL)
            time.sleep(0.2)
    pidfile.unlink(missing_ok=True)


# name: (env var that replaces it, env var for its port, default dev port)
DEV_SERVERS = {
    "redis": ("REDIS_URL", "DEV_REDIS_PORT", 6390),
    "mongo": ("MONGO_URI", "DEV_MONGO_PORT", 27030),
}


def plan_dev_servers(env: dict[str, str]) -> list[ManagedServer]:
    """Embedded servers for the URLs not configured; exits if a port is taken."""
    from tools import devservers as ds

    factories = {"redis": ds.redis_server, "mongo": ds.mongo_server}
    planned = []
    for name, (url_var, port_var, default_port) in DEV_SERVERS.items():
        if url_var in env:
            continue
        port, data_dir = int(env.get(port_var, default_port)), DEVDATA / name
        stop_stale(name, data_dir, port_var)
        if ds.port_in_use(port):
            die(
                f"port {port} (dev {name}) is already in use by another program; "
                f"set {port_var} to a free port, or {url_var} to use an existing server"
            )
        planned.append(factories[name](port=port, data_dir=data_dir))
    return planned


def stop_gunicorn(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)  # gunicorn: INT = quick shutdown
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def cmd_run(args: list[str]) -> int:
    """Start the app with gunicorn, plus embedded Redis/MongoDB unless configured."""
    from dotenv import load_dotenv

    from tools.devservers import die_with_parent, port_in_use

    if args:
        die(f"`run` takes no arguments (got {' '.join(args)}); configure it with env vars")
    load_dotenv(ROOT / ".env", override=False)  # real env vars win over .env
    check_data_dir()
    env = dict(os.environ)
    env.pop("DEV_PY_REEXEC", None)
    defaults = {
        "PORT": "8000",
        "HOST": "127.0.0.1",  # gunicorn.conf.py defaults to 0.0.0.0: keep dev local
        "WEB_CONCURRENCY": "2",
        "APP_ENV": "development",
    }
    credentials, fresh = dev_secrets()
    for key, value in {**credentials, **defaults}.items():
        env.setdefault(key, value)
    port = int(env["PORT"])
    env.setdefault("PUBLIC_URL", f"http://{env['HOST']}:{port}")  # the WebSocket Origin check
    if port_in_use(port):
        die(f"port {port} (the app) is already in use; choose another with PORT=<port>")
    planned = plan_dev_servers(env)
    DEVDATA.mkdir(exist_ok=True)

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _on_signal)
    started: list[ManagedServer] = []
    gunicorn: subprocess.Popen[bytes] | None = None
    code = 0
    try:
        for server in planned:
            say(f"starting dev {server.name} on port {server.port} ({server.data_dir})")
            started.append(server.start())
            assert server.process is not None
            (DEVDATA / f"{server.name}.pid").write_text(f"{server.process.pid}\n")
            suffix = "notifications" if server.name == "mongo" else ""
            env[DEV_SERVERS[server.name][0]] = server.url + suffix
        # Indexes and the retention TTL, as the systemd unit's ExecStartPre does.
        index_cmd = [str(VENV / "bin" / "flask"), "--app", "wsgi", "db", "create-indexes"]
        subprocess.run(index_cmd, cwd=ROOT, env=env, check=False, timeout=60)
        gunicorn = subprocess.Popen(
            [str(VENV / "bin" / "gunicorn"), "-c", "gunicorn.conf.py", "wsgi:app"],
            cwd=ROOT,
            env=env,
            start_new_session=True,  # Ctrl-C reaches us; we stop it in order
            preexec_fn=die_with_parent,  # noqa: PLW1509 (only calls prctl)
        )
        deadline = time.monotonic() + 60
        while gunicorn.poll() is None and time.monotonic() < deadline:
            if answers(f"http://127.0.0.1:{port}/readyz"):
                if fresh:
                    save_dev_secrets(credentials)
                print_banner(env, port)
                break
            time.sleep(0.2)
        else:
            if gunicorn.poll() is None:
                say(f"the app did not answer on port {port} within 60 s; still waiting for it")
        code = gunicorn.wait()
        code = 128 - code if code < 0 else code  # killed by signal N -> 128+N
        say(f"gunicorn exited with code {code}")
    except Stop as exc:
        say(f"{exc}: shutting down")
    except RuntimeError as exc:  # a server did not start; the message has its log
        say(f"error: {exc}")
        code = 1
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        if gunicorn is not None:
            stop_gunicorn(gunicorn)
        for server in reversed(started):
            server.stop()
            (DEVDATA / f"{server.name}.pid").unlink(missing_ok=True)
    return code


def print_banner(env: dict[str, str], port: int) -> None:
    url = f"http://127.0.0.1:{port}"
    dev_env = DEVDATA / "dev.env"
    key = env["API_KEYS"].split(",")[0].strip()
    print(
        f"""
  Notification service (development) is up
    App:        {url}
    Dashboard:  {url}/dashboard   login {env["ADMIN_USERNAME"]} / {env["ADMIN_PASSWORD"]}
    Demo:       {url}/demo
    API key:    {key}
    MongoDB:    {env["MONGO_URI"]}
    Redis:      {env["REDIS_URL"]}

  Send a notification:
    curl -X POST {url}/api/notifications \\
      -H 'Authorization: Bearer {key}' -H 'Content-Type: application/json' \\
      -d '{{"user_id":"alice","message":"hello"}}'

  Ctrl-C stops everything. Dev credentials live in {dev_env}.
""",
        flush=True,
    )


# --- test ----------------------------------------------------------------------


def cmd_test(args: list[str]) -> int:
    """Run pytest in the venv (installs Chromium, nginx and redis-server for their tests when possible)."""
    missing = [pkg for pkg, present in TEST_PACKAGES.items() if not present()]
    if missing and os.geteuid() == 0 and shutil.which("apt-get"):
        say(f"installing {' '.join(missing)} for the tests that drive them (apt-get, about a minute) ...")
        apt_env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", *missing]):
            done = subprocess.run(cmd, env=apt_env, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                print((done.stdout + done.stderr)[-3000:], file=sys.stderr)
                say(f"warning: `{' '.join(cmd)}` failed; those tests fail under CI without them")
                break
    os.chdir(ROOT)
    if not args:  # the whole suite: processes sharing a queue of test files (tools/testshards.py)
        os.execv(VENV_PY, [str(VENV_PY), "-m", "tools.testshards"])
    os.execv(VENV_PY, [str(VENV_PY), "-m", "pytest", *args])


# --- bench ---------------------------------------------------------------------


def cmd_bench(args: list[str]) -> int:
    """Install bench/requirements.txt when it changed, then run bench/run.py."""
    reqs = ROOT / "bench" / "requirements.txt"
    stamp = VENV / ".bench-requirements.sha256"
    wanted = hashlib.sha256(reqs.read_bytes()).hexdigest()
    if not stamp.exists() or stamp.read_text().strip() != wanted:
        say("installing bench/requirements.txt into .venv ...")
        pip = [str(VENV_PY), "-m", "pip", "install", "-r", str(reqs)]
        if subprocess.run(pip, cwd=ROOT, check=False).returncode != 0:
            die("pip install failed (see above)")
        stamp.write_text(wanted + "\n")
    os.chdir(ROOT)
    os.execv(VENV_PY, [str(VENV_PY), str(ROOT / "bench" / "run.py"), *args])


COMMANDS: dict[str, Callable[[list[str]], int]] = {
    "run": cmd_run,
    "test": cmd_test,
    "bench": cmd_bench,
}


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in COMMANDS:
        print(__doc__, file=sys.stderr)
        return 2
    ensure_venv(argv)
    return COMMANDS[argv[0]](argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
