"""A small reader for protobuf text format, enough for Triton's ``config.pbtxt``.

The server must not need protobuf or Triton's generated classes to read its own
repository, so this parses the text format generically: a message becomes a dict of
field name -> list of values (every field may repeat); a value is a str, int, float,
an enum identifier (str) or a nested dict.
"""

from __future__ import annotations

import re

from nscompile.errors import NscompileError

_TOKEN = re.compile(
    r"""\s*(?:
        (?P<comment>\#[^\n]*)
      | (?P<string>"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*')
      | (?P<number>[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?[fF]?)
      | (?P<ident>[A-Za-z_][A-Za-z0-9_.]*)
      | (?P<punct>[{}\[\]:,;<>])
    )""",
    re.VERBOSE,
)


def _tokens(text: str, where: str) -> list[tuple[str, str]]:
    out, pos = [], 0
    text = text.rstrip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            pos += len(text[pos:]) - len(text[pos:].lstrip())
            line = text.count("\n", 0, pos) + 1
            raise NscompileError(f"{where}:{line}: cannot parse {text[pos:pos + 20]!r}; fix the config")
        pos = m.end()
        kind = m.lastgroup
        if kind != "comment":
            out.append((kind, m.group(kind)))
    return out


def _unquote(s: str) -> str:
    body = s[1:-1]
    return body.encode("latin-1", "backslashreplace").decode("unicode_escape") if "\\" in body else body


def parse_pbtxt(text: str, where: str = "config.pbtxt") -> dict[str, list]:
    """Parse protobuf text format.

    Args:
        text: the file's content.
        where: the file name, for messages.

    Returns:
        field name -> list of values.

    Raises:
        NscompileError: a syntax error, with the line.
    """
    toks = _tokens(text, where)
    pos = 0

    def fail(msg: str):
        raise NscompileError(f"{where}: {msg}; fix the config")

    def scalar() -> object:
        nonlocal pos
        kind, val = toks[pos]
        pos += 1
        if kind == "string":
            parts = [_unquote(val)]
            while pos < len(toks) and toks[pos][0] == "string":  # adjacent strings concatenate
                parts.append(_unquote(toks[pos][1]))
                pos += 1
            return "".join(parts)
        if kind == "number":
            v = val.rstrip("fF")
            return float(v) if any(c in v for c in ".eE") else int(v)
        if kind == "ident":
            return {"true": True, "false": False}.get(val, val)
        fail(f"unexpected {val!r}")

    def value() -> object:
        nonlocal pos
        if pos >= len(toks):
            fail("unexpected end of file")
        if toks[pos][1] in ("{", "<"):
            close = "}" if toks[pos][1] == "{" else ">"
            pos += 1
            return message(close)
        return scalar()

    def message(close: str | None) -> dict[str, list]:
        nonlocal pos
        msg: dict[str, list] = {}
        while pos < len(toks):
            kind, val = toks[pos]
            if close is not None and val == close:
                pos += 1
                return msg
            if kind != "ident":
                fail(f"expected a field name, found {val!r}")
            pos += 1
            if pos < len(toks) and toks[pos][1] == ":":
                pos += 1
            values = msg.setdefault(val, [])
            if pos < len(toks) and toks[pos][1] == "[":
                pos += 1
                while pos < len(toks) and toks[pos][1] != "]":
                    values.append(value())
                    if pos < len(toks) and toks[pos][1] == ",":
                        pos += 1
                if pos >= len(toks):
                    fail("unclosed '['")
                pos += 1
            else:
                values.append(value())
            if pos < len(toks) and toks[pos][1] in (",", ";"):
                pos += 1
        if close is not None:
            fail(f"missing {close!r}")
        return msg

    return message(None)
