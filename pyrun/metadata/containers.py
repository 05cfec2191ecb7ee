"""Container records (containerd ``containers.Store``): what a container
is made of, not its running state.  A container is a GC root and holds
its snapshot."""
import re
from dataclasses import dataclass, field
from datetime import datetime

from pyrun.errdefs import InvalidArgument
from pyrun.filters import labels_field
from pyrun.metadata.records import RecordTable, check_json_object

# containerd's identifier rule (identifiers.Validate), at most 76 characters.
_ID = re.compile(r"[A-Za-z0-9]+(?:[._-][A-Za-z0-9]+)*")


@dataclass(frozen=True)
class Container:
    """``id``; ``image`` name; ``runtime`` ``{"name": str, "options": dict}``;
    ``spec`` (the OCI runtime config as a dict); ``snapshotter`` and
    ``snapshot_key`` of its root filesystem (may be empty); ``labels``;
    ``extensions`` (``{name: JSON value}``) and times."""

    id: str
    image: str = ""
    runtime: dict = field(default_factory=dict)
    spec: dict = field(default_factory=dict)
    snapshotter: str = ""
    snapshot_key: str = ""
    labels: dict = field(default_factory=dict)
    extensions: dict = field(default_factory=dict)
    created_at: datetime = None
    updated_at: datetime = None


def validate_id(cid, what="container id"):
    """Raises InvalidArgument unless ``cid`` is a valid ``what`` (containerd's
    identifiers: letters and digits joined by '.', '_' or '-', at most 76
    characters)."""
    if not isinstance(cid, str) or len(cid) > 76 or not _ID.fullmatch(cid):
        raise InvalidArgument(f"invalid {what} {cid!r}: use letters and digits joined "
                              "by '.', '_' or '-', at most 76 characters")


class Containers(RecordTable):
    """The containers of one namespace.  Filter fields: id, image,
    runtime.name, snapshotter, labels.<key>."""

    table, kind, record = "containers", "container", Container
    json_columns = ("runtime", "spec", "extensions")
    updatable = ("image", "spec", "snapshot_key", "snapshotter", "extensions", "runtime")

    def validate(self, c):
        validate_id(c.id)
        what = f"container {c.id!r}"
        if not isinstance(c.image, str):
            raise InvalidArgument(f"{what}: image must be a string")
        check_json_object(c.runtime, f"{what}: runtime")
        if not isinstance(c.runtime.get("name"), str) or not c.runtime["name"]:
            raise InvalidArgument(f"{what}: runtime name must be set")
        check_json_object(c.runtime.get("options", {}), f"{what}: runtime options")
        check_json_object(c.spec, f"{what}: spec")
        check_json_object(c.extensions, f"{what}: extensions")
        if not isinstance(c.snapshotter, str) or not isinstance(c.snapshot_key, str):
            raise InvalidArgument(f"{what}: snapshotter and snapshot_key must be strings")
        if c.snapshot_key and not c.snapshotter:
            raise InvalidArgument(f"{what}: snapshot_key {c.snapshot_key!r} needs a snapshotter")

    def field(self, c, path):
        if path[0] == "labels":
            return labels_field(c.labels, path)
        if path == ["runtime", "name"]:
            return c.runtime.get("name")
        if len(path) == 1 and path[0] in ("id", "image", "snapshotter"):
            return getattr(c, path[0])
        return None
