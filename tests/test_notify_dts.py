"""static/notify.d.ts declares what static/notify.js offers: every public method of the
client, every callback option, every inbox change, the element and its attributes."""

from __future__ import annotations

import re
from pathlib import Path

STATIC = Path(__file__).resolve().parent.parent / "static"
JS = (STATIC / "notify.js").read_text()
DTS = (STATIC / "notify.d.ts").read_text()


def block(text: str, start: str) -> str:
    """The braces-balanced body after ``start``."""
    at = text.index(start)
    depth, i = 0, text.index("{", at)
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i : j + 1]
    raise AssertionError(f"unbalanced after {start!r}")


def js_list(name: str) -> list[str]:
    return re.findall(r"'(\w+)'", re.search(rf"const {name} = \[(.*?)\];", JS).group(1))


def test_every_public_client_method_is_declared() -> None:
    methods = set(re.findall(r"^    (?:async )?([a-z]\w*)\(", block(JS, "class Client {"), re.M)) - {
        "constructor"
    }
    declared = set(re.findall(r"^    (\w+)\(", block(DTS, "class Client {"), re.M))
    assert methods and methods <= declared, methods - declared


def test_every_callback_and_change_is_declared() -> None:
    options = block(DTS, "interface Options {")
    assert all(f"{name}?(" in options for name in js_list("CALLBACKS"))
    assert all(
        f"'{change}'" in re.search(r"type Change = (.*);", DTS).group(1) for change in js_list("CHANGES")
    )
    defaults = re.search(r"const DEFAULTS = \{(.*?)\};", JS, re.S).group(1)
    keys = re.findall(r"^\s+(\w+):", defaults, re.M)
    assert keys and all(re.search(rf"^\s+{key}\??:", options, re.M) for key in keys), keys


def test_the_element_is_declared_with_its_attributes() -> None:
    attributes = re.findall(r"'(\w+)'", re.search(r"observedAttributes\(\) \{ return \[(.*?)\]", JS).group(1))
    usage = re.search(r"/\*\*\n \* <notify-inbox (.*?)>", DTS).group(1)
    assert attributes and all(f"{name}=" in usage for name in attributes)
    assert "'notify-inbox': NotifyInboxElement" in DTS
