"""Labels on stored objects: validation and field-path updates.

Both follow containerd: a label's key plus value may hold at most 4096
bytes (``labels.Validate``), and ``update(obj, fieldpaths)`` treats
``"labels"`` as "replace all labels" and ``"labels.<key>"`` as "set or,
when absent from the new object, delete that one key".
"""
from pyrun.errdefs import InvalidArgument

MAX_LABEL_SIZE = 4096


def validate(labels, what):
    """Check a ``{str: str}`` label map; InvalidArgument names ``what``
    (e.g. ``"content sha256:…"``) and the bad key."""
    if labels is None:
        return {}
    if not isinstance(labels, dict):
        raise InvalidArgument(f"{what}: labels must be a dict of strings, got {type(labels).__name__}")
    for key, value in labels.items():
        if not isinstance(key, str) or not isinstance(value, str) or not key:
            raise InvalidArgument(f"{what}: label {key!r}={value!r}: keys and values must be "
                                  "strings and keys non-empty")
        size = len(key.encode()) + len(value.encode())
        if size > MAX_LABEL_SIZE:
            raise InvalidArgument(f"{what}: label {key!r}: key and value length ({size} bytes) "
                                  f"greater than maximum size ({MAX_LABEL_SIZE} bytes)")
    return dict(labels)


def apply_update(current, new, fieldpaths, what, other_fields=()):
    """The labels after updating ``current`` from ``new`` along ``fieldpaths``.

    Empty ``fieldpaths`` replaces every label.  Field paths that are not
    labels must be listed in ``other_fields`` (the caller handles those);
    anything else raises InvalidArgument naming the field and ``what``.
    """
    new = validate(new, what)
    if not fieldpaths:
        return new
    labels = dict(current)
    for path in fieldpaths:
        if path == "labels":
            labels = dict(new)
        elif path.startswith("labels."):
            key = path[len("labels."):]
            if key in new:
                labels[key] = new[key]
            else:
                labels.pop(key, None)
        elif path not in other_fields:
            raise InvalidArgument(f"cannot update field {path!r} of {what}")
    return labels
