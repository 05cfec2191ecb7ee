"""containerd-style filter strings for list and walk calls.

Grammar (containerd ``filters`` package)::

    filter    := selector ("," selector)*          all must match
    selector  := fieldpath [op value]              no op: field is present
    fieldpath := field ("." field)*                e.g. labels."a.b"
    op        := "==" | "!=" | "~="                ~= is a regular expression
    field, value := "double quoted" | bare characters

A list of filter strings matches when any one of them matches (OR), and an
empty list matches everything.  Each store supplies an *adaptor*
``field(obj, path) -> str | None`` that looks a field path up on its objects.
"""
import re

from pyrun.errdefs import InvalidArgument

_TOKEN = re.compile(r'\s*(?:(?P<q>"(?:[^"\\]|\\.)*")|(?P<op>==|!=|~=)|(?P<punct>[.,])'
                    r'|(?P<bare>[^\s".,=!~]+(?:[=!~](?![=])[^\s".,=!~]*)*))')


def _tokens(s):
    pos, out = 0, []
    s = s.rstrip()
    while pos < len(s):
        m = _TOKEN.match(s, pos)
        if not m or m.end() == pos:
            raise InvalidArgument(f"invalid filter {s!r}: unexpected character at {pos}: {s[pos:]!r}")
        pos = m.end()
        if m.group("q"):
            out.append(("str", re.sub(r"\\(.)", r"\1", m.group("q")[1:-1])))
        elif m.group("op"):
            out.append(("op", m.group("op")))
        elif m.group("punct"):
            out.append((m.group("punct"), m.group("punct")))
        else:
            out.append(("str", m.group("bare")))
    return out


def _parse_one(s):
    toks = _tokens(s)
    selectors, i = [], 0
    while i < len(toks):
        path = []
        while True:
            if i >= len(toks) or toks[i][0] != "str":
                raise InvalidArgument(f"invalid filter {s!r}: expected a field name")
            path.append(toks[i][1])
            i += 1
            if i < len(toks) and toks[i][0] == ".":
                i += 1
                continue
            break
        op = value = None
        if i < len(toks) and toks[i][0] == "op":
            op = toks[i][1]
            # A value may contain dots (a digest, a label value): join the
            # tokens up to the next comma.
            i += 1
            parts = []
            while i < len(toks) and toks[i][0] != ",":
                parts.append(toks[i][1])
                i += 1
            if not parts:
                raise InvalidArgument(f"invalid filter {s!r}: missing value after {op}")
            value = "".join(parts)
            if op == "~=":
                try:
                    value = re.compile(value)
                except re.error as e:
                    raise InvalidArgument(f"invalid filter {s!r}: bad regular expression: {e}") from None
        selectors.append((path, op, value))
        if i < len(toks):
            if toks[i][0] != ",":
                raise InvalidArgument(f"invalid filter {s!r}: expected ',' or an operator")
            i += 1
    return selectors


def parse(filters):
    """Compile a list of filter strings into a predicate ``match(obj, adaptor)``.

    Raises InvalidArgument naming the bad filter string.
    """
    if isinstance(filters, str):
        filters = [filters]
    compiled = [_parse_one(f) for f in filters if f.strip()]

    def match(obj, adaptor):
        if not compiled:
            return True
        return any(all(_test(adaptor(obj, path), op, value) for path, op, value in sel)
                   for sel in compiled)
    return match


def _test(actual, op, value):
    if op is None:
        return actual is not None
    if op == "==":
        return actual == value
    if op == "!=":
        return actual != value
    return actual is not None and value.search(actual) is not None


def labels_field(labels, path):
    """Adaptor helper: ``labels.<key>`` lookup (key may contain dots when
    given unquoted, as containerd joins the rest of the path)."""
    if len(path) < 2:
        return None
    return labels.get(".".join(path[1:]))
