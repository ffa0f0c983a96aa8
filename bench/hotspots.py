"""Summarize py-spy collapsed stacks (``--format raw``): top self and inclusive frames.

.venv/bin/python bench/hotspots.py .bench-results/tmp/profile-throughput-*.txt [--top 25]
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path


def frame_name(frame: str) -> str:
    # "func (path/to/file.py:123)" -> "func (file.py)"
    m = re.match(r"(.*?) \((.*?):\d+\)$", frame)
    if not m:
        return frame
    path = m.group(2)
    deep = "site-packages" in path or "/app/" in path
    short = "/".join(path.split("/")[-2:]) if deep else path.split("/")[-1]
    return f"{m.group(1)} ({short})"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("files", nargs="+")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--idle", action="store_true", help="keep samples of idle (waiting) stacks")
    args = parser.parse_args()
    self_t: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    total = 0
    for name in args.files:
        for line in Path(name).read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            if not stack:
                continue
            frames = [frame_name(f) for f in stack.split(";")]
            if not args.idle and frames and frames[-1].startswith(("run (gevent/hub.py", "wait (gevent")):
                continue
            n = int(count)
            total += n
            self_t[frames[-1]] += n
            for f in set(frames):
                incl[f] += n
    print(f"{total} busy samples")
    print("-- self --")
    for f, n in self_t.most_common(args.top):
        print(f"{100 * n / total:5.1f}%  {f}")
    print("-- inclusive --")
    for f, n in incl.most_common(args.top):
        print(f"{100 * n / total:5.1f}%  {f}")


if __name__ == "__main__":
    main()
