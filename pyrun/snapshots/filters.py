"""containerd's filter syntax, for :meth:`Snapshotter.walk` (containerd
``filters`` package).

A filter is selectors joined by ``,``; all must match.  A list of filters
matches if any one does.  A selector is ``fieldpath``, ``fieldpath==value``,
``fieldpath!=value`` or ``fieldpath~=regexp``.  A field path is names
joined by ``.``; a name that is not an identifier is double-quoted
(``labels."containerd.io/gc.root"``).  Values are double-quoted or bare (up
to the next ``,``).  As in containerd, ``==`` needs the field to be present,
``!=`` matches an absent field, and a bare field path tests presence.
"""
import re
from dataclasses import dataclass

from pyrun.errdefs import InvalidArgument

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_QUOTED = re.compile(r'"((?:[^"\\]|\\.)*)"')
_OP = re.compile(r"==|!=|~=")


@dataclass(frozen=True)
class Selector:
    fieldpath: tuple
    op: str = ""          # "" (present), "==", "!=", "~="
    value: str = ""

    def match(self, field):
        """``field(fieldpath)`` returns the value or None if absent."""
        value = field(self.fieldpath)
        if self.op == "":
            return value is not None
        if self.op == "==":
            return value is not None and value == self.value
        if self.op == "!=":
            return value != self.value
        return value is not None and re.search(self.value, value) is not None


def _unquote(body):
    return re.sub(r"\\(.)", r"\1", body)


def parse(text):
    """Parse one filter into a tuple of :class:`Selector`.  InvalidArgument
    names the filter and the position of the error."""
    sels, i = [], 0

    def fail(why):
        raise InvalidArgument(f"filter {text!r}: {why} at position {i}")

    while True:
        path = []
        while True:
            m = _IDENT.match(text, i) or _QUOTED.match(text, i)
            if not m:
                fail("expected a field name")
            path.append(m.group(0) if m.re is _IDENT else _unquote(m.group(1)))
            i = m.end()
            if text.startswith(".", i):
                i += 1
                continue
            break
        op, value = "", ""
        m = _OP.match(text, i)
        if m:
            op, i = m.group(0), m.end()
            start = i
            q = _QUOTED.match(text, i)
            if q:
                value, i = _unquote(q.group(1)), q.end()
            else:
                end = text.find(",", i)
                end = len(text) if end < 0 else end
                value, i = text[i:end], end
                if not value:
                    fail("expected a value")
            if op == "~=":
                try:
                    re.compile(value)
                except re.error as e:
                    i = start
                    fail(f"bad regexp {value!r} ({e})")
        sels.append(Selector(tuple(path), op, value))
        if i == len(text):
            return tuple(sels)
        if text[i] != ",":
            fail("expected ','")
        i += 1


def parse_all(filters):
    """Parse a list of filter strings; the result matches if any matches."""
    return [parse(f) for f in filters]


def match_any(parsed, field):
    """True if ``parsed`` (from :func:`parse_all`) is empty or one of its
    filters has all selectors matching ``field``."""
    return not parsed or any(all(s.match(field) for s in sels) for sels in parsed)
