"""containerd filter strings applied to any stored object.

The syntax and its parser live in :mod:`pyrun.snapshots.filters`
(``labels."a.b"==v,name~=^x``; a list matches if any filter does).  Each
store supplies an *adaptor* ``field(obj, path) -> str | None`` that looks a
field path (a list of names) up on its objects.
"""
from pyrun.snapshots.filters import match_any, parse_all


def parse(filters):
    """Compile filter strings (a list, or one string) into a predicate
    ``match(obj, adaptor)``.  InvalidArgument names a bad filter."""
    parsed = parse_all([filters] if isinstance(filters, str) else list(filters))

    def match(obj, adaptor):
        return match_any(parsed, lambda path: adaptor(obj, list(path)))
    return match


def labels_field(labels, path):
    """Adaptor helper: the value of ``labels.<key>``, or None."""
    return labels.get(path[1]) if len(path) == 2 else None
