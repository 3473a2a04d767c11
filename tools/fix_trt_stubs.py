"""Make the generated ``tensorrt-stubs`` .pyi files parse, mechanically.

The stubs (``tensorrt-stubs`` 10.13.0.35.1 on PyPI) are generated from the pybind11 docstrings and contain
three kinds of syntax error:

- parameters named after keywords (``in``): renamed with a trailing underscore;
- parameters without a default after parameters with one: given ``= ...``;
- ``import tensorrt_libs`` (a package with no stubs): dropped.

Usage: ``python tools/fix_trt_stubs.py DIR`` (every ``.pyi`` under DIR is fixed in place; idempotent).
Exits non-zero if a file still does not parse afterwards.
"""

from __future__ import annotations

import ast
import keyword
import re
import sys
from pathlib import Path

_DEF = re.compile(r"^(?P<head>\s*(?:async\s+)?def\s+\w+\s*\()(?P<params>.*)(?P<tail>\)\s*(?:->.*)?:.*)$")


def _split_top_level(s: str) -> list[str]:
    """Split a parameter list at commas that are not nested in brackets or strings."""
    parts, depth, cur, quote = [], 0, [], ""
    for ch in s:
        if quote:
            cur.append(ch)
            if ch == quote:
                quote = ""
            continue
        if ch in "'\"":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
            continue
        cur.append(ch)
    if cur:
        parts.append("".join(cur))
    return parts


def _has_default(param: str) -> bool:
    depth = 0
    for ch in param:
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == "=" and depth == 0:
            return True
    return False


def _fix_params(params: str) -> str:
    out: list[str] = []
    seen_default = False
    keyword_only = False
    for raw in _split_top_level(params):
        p = raw.strip()
        if not p:
            continue
        name = re.split(r"[:=\s]", p, maxsplit=1)[0]
        if keyword.iskeyword(name):
            p = name + "_" + p[len(name):]
            name += "_"
        if name.startswith("*") or name == "/":
            keyword_only = keyword_only or (name.startswith("*") and not name.startswith("**"))
            out.append(p)
            continue
        if _has_default(p):
            seen_default = True
        elif seen_default and not keyword_only:
            p += " = ..."
        out.append(p)
    return ", ".join(out)


def fix_source(text: str) -> str:
    lines = []
    for line in text.splitlines():
        if re.match(r"^\s*import\s+tensorrt_libs\b", line) or re.match(r"^\s*from\s+tensorrt_libs\b", line):
            continue
        m = _DEF.match(line)
        if m:
            line = m["head"] + _fix_params(m["params"]) + m["tail"]
        lines.append(line)
    text = "\n".join(lines) + "\n"
    # ``tensorrt_libs`` also appears in ``__all__``; a name that is not defined there upsets mypy
    return re.sub(r"'tensorrt_libs',\s*", "", text)


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: fix_trt_stubs.py DIR", file=sys.stderr)
        return 2
    bad = 0
    for path in sorted(Path(argv[1]).rglob("*.pyi")):
        text = path.read_text()
        fixed = fix_source(text)
        if fixed != text:
            path.write_text(fixed)
        try:
            ast.parse(fixed, filename=str(path))
        except SyntaxError as e:
            print(f"{path}:{e.lineno}: still does not parse: {e.msg}", file=sys.stderr)
            bad += 1
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
