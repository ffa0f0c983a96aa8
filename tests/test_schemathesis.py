"""schemathesis against the live app, driven by /api/openapi.json, with all its default checks.

schemathesis runs as its own process (the ``schemathesis run`` CLI): its pytest plugin and
its imports would load before this suite's gevent monkey-patching, so the plugin is disabled
in pyproject.toml and schemathesis is kept out of this process. Two bounded runs side by
side: the API-key endpoints with an API key, the subscriber endpoints with a subscriber
token. The streams never end, so tests/test_stream.py and tests/test_hostile.py cover them.
Reports go to test-artifacts/schemathesis-*.txt.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

SCHEMATHESIS = shutil.which("schemathesis", path=str(Path(sys.executable).parent))
STREAMS = "^/(stream|ws)$"
API_ME = "^/api/me/"
# A body over MAX_BODY_BYTES is refused with 413 whatever it holds: JSON Schema cannot say
# "at most N bytes", so 413 (documented on every operation with a body) counts as a refusal.
CONFIG = """
[checks.negative_data_rejection]
expected-statuses = [400, 401, 403, 404, 405, 406, 409, 413, 415, 422, 428, 429]
[checks.positive_data_acceptance]
expected-statuses = [200, 201, 202, 401, 403, 404, 409, 413, 429]
# send_at / expires_at are valid relative to now (at most a year ahead, expiring after now),
# which JSON Schema cannot say: a schema-valid time may be refused with 422.
[[operations]]
include-name = "POST /api/notifications"
checks.positive_data_acceptance.expected-statuses = [201, 202, 401, 409, 413, 422, 429]
# A time zone must be one zoneinfo knows, and quiet hours must not end when they start.
[[operations]]
include-name-regex = "^PUT /api/.*/preferences$"
checks.positive_data_acceptance.expected-statuses = [200, 401, 413, 422, 429]
"""


def _start(server, config: Path, report: Path, bearer: str, select: list[str]) -> subprocess.Popen:
    cwd = config.parent / "schemathesis-cwd"  # it writes a .schemathesis cache in its cwd
    cwd.mkdir(exist_ok=True)
    cmd = [
        SCHEMATHESIS, "--no-color", "--config-file", str(config), "run", server.url + "/api/openapi.json",
        "--url", server.url,
        "-H", f"Authorization: Bearer {bearer}",
        "--max-examples", "15",
        "--phases", "examples,coverage,fuzzing",
        "--seed", "1",
        "--workers", "1",
        "--request-timeout", "10",
        "--max-time", "30",
        *select,
    ]  # fmt: skip
    return subprocess.Popen(cmd, stdout=report.open("w"), stderr=subprocess.STDOUT, cwd=cwd)


def test_schemathesis_default_checks_pass(live, artifacts):
    server = live(workers=2)
    config = artifacts / "schemathesis.toml"
    config.write_text(CONFIG)
    runs = {
        "api-key": _start(
            server,
            config,
            artifacts / "schemathesis-api-key.txt",
            server.stack.api_key,
            ["--exclude-path-regex", f"{STREAMS}|{API_ME}"],
        ),
        "subscriber": _start(
            server,
            config,
            artifacts / "schemathesis-subscriber.txt",
            server.token("st-subscriber", ttl=600),
            ["--include-path-regex", API_ME],
        ),
    }
    failed = {}
    for name, proc in runs.items():
        try:
            code = proc.wait(120)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = proc.wait(10)
        if code != 0:
            failed[name] = (artifacts / f"schemathesis-{name}.txt").read_text()[-5000:]
    assert not failed, "\n\n".join(f"--- {name}\n{text}" for name, text in failed.items())
    assert server.process.poll() is None
    assert "Traceback" not in server.log()
