"""Leases: named holds that keep content, ingests and snapshots from GC.

containerd's ``leases.Manager``: a lease is a GC root for the resources
added to it, until the RFC 3339 time in its ``containerd.io/gc.expire``
label passes (no label: until deleted).  Stores opened with ``lease=ID``
add what they create to that lease.
"""
import json
import secrets
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

from pyrun import labels as labelsmod
from pyrun.filters import labels_field, parse as parse_filters
from pyrun.content.digest import parse_digest
from pyrun.errdefs import AlreadyExists, InvalidArgument, NotFound
from pyrun.metadata.db import now_ns, to_time, validate_namespace

EXPIRE_LABEL = "containerd.io/gc.expire"


@dataclass(frozen=True)
class Lease:
    """``id``, ``labels`` and ``created_at`` (aware UTC datetime)."""

    id: str
    labels: dict = field(default_factory=dict)
    created_at: datetime = None


@dataclass(frozen=True)
class Resource:
    """A leased object: ``type`` "content" (``id`` a digest), "ingests"
    (``id`` a ref) or "snapshots/<snapshotter>" (``id`` a key)."""

    id: str
    type: str


def parse_expire(value, what):
    """The RFC 3339 ``containerd.io/gc.expire`` value as an aware datetime;
    InvalidArgument naming ``what`` if it does not parse."""
    try:
        t = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    except (ValueError, AttributeError):
        raise InvalidArgument(f"{what}: label {EXPIRE_LABEL}={value!r} is not an RFC 3339 time") from None
    return t if t.tzinfo else t.replace(tzinfo=timezone.utc)


def check_resource(resource):
    """InvalidArgument unless ``resource`` has a known type and valid id."""
    if resource.type == "content":
        parse_digest(resource.id)
    elif resource.type == "ingests" or (resource.type.startswith("snapshots/")
                                        and len(resource.type) > len("snapshots/")):
        if not isinstance(resource.id, str) or not resource.id:
            raise InvalidArgument(f"lease resource {resource.type}: empty id")
    else:
        raise InvalidArgument(f"lease resource {resource.id!r}: unknown type {resource.type!r} "
                              "(content, ingests, snapshots/<snapshotter>)")


def _lease_field(lease, path):
    if path[0] == "labels":
        return labels_field(lease.labels, path)
    if path == ["id"]:
        return lease.id
    return None


class Leases:
    """The leases of one namespace."""

    def __init__(self, db, namespace):
        self.db = db
        self.namespace = validate_namespace(namespace)

    def create(self, id=None, labels=None, expire=None):
        """Create a lease; ``id`` defaults to a random one, ``expire`` (a
        timedelta) sets the expiry label.  AlreadyExists if the id is taken."""
        id = id or f"lease-{secrets.token_hex(8)}"
        if not isinstance(id, str):
            raise InvalidArgument(f"invalid lease id {id!r}")
        labels = labelsmod.validate(labels, f"lease {id}")
        if expire is not None:
            if not isinstance(expire, timedelta):
                raise InvalidArgument(f"lease {id}: expire must be a timedelta, got {expire!r}")
            labels[EXPIRE_LABEL] = (datetime.now(timezone.utc) + expire).isoformat()
        if EXPIRE_LABEL in labels:
            parse_expire(labels[EXPIRE_LABEL], f"lease {id}")
        with self.db.transaction() as c:
            self.db.ensure_namespace(self.namespace)
            if c.execute("SELECT 1 FROM leases WHERE namespace=? AND id=?",
                         (self.namespace, id)).fetchone():
                raise AlreadyExists(f"lease {id}: already exists in namespace {self.namespace}")
            now = now_ns()
            c.execute("INSERT INTO leases (namespace, id, labels, created_at) VALUES (?, ?, ?, ?)",
                      (self.namespace, id, json.dumps(labels), now))
        return Lease(id, labels, to_time(now))

    def get(self, id):
        """The :class:`Lease` ``id``; NotFound if absent."""
        rows = self.db.query("SELECT * FROM leases WHERE namespace=? AND id=?", (self.namespace, id))
        if not rows:
            raise NotFound(f"lease {id}: not found in namespace {self.namespace}")
        return _lease(rows[0])

    def list(self, filters=()):
        """Leases matching containerd filter strings (fields id, labels)."""
        match = parse_filters(filters)
        rows = self.db.query("SELECT * FROM leases WHERE namespace=? ORDER BY id", (self.namespace,))
        return [lease for lease in map(_lease, rows) if match(lease, _lease_field)]

    def delete(self, id):
        """Delete lease ``id`` (its resources become collectable); NotFound."""
        with self.db.transaction() as c:
            cur = c.execute("DELETE FROM leases WHERE namespace=? AND id=?", (self.namespace, id))
            if not cur.rowcount:
                raise NotFound(f"lease {id}: not found in namespace {self.namespace}")

    def add_resource(self, id, resource):
        """Add ``resource`` to lease ``id``; NotFound if the lease is absent."""
        check_resource(resource)
        with self.db.transaction():
            self.get(id)
            self.db.conn.execute("INSERT OR IGNORE INTO lease_resources (namespace, lease, type, id) "
                                 "VALUES (?, ?, ?, ?)", (self.namespace, id, resource.type, resource.id))

    def delete_resource(self, id, resource):
        """Remove ``resource`` from lease ``id``; NotFound if the lease is absent."""
        with self.db.transaction():
            self.get(id)
            self.db.conn.execute("DELETE FROM lease_resources WHERE namespace=? AND lease=? AND "
                                 "type=? AND id=?", (self.namespace, id, resource.type, resource.id))

    def list_resources(self, id):
        """The resources held by lease ``id``; NotFound if absent."""
        self.get(id)
        rows = self.db.query("SELECT type, id FROM lease_resources WHERE namespace=? AND lease=? "
                             "ORDER BY type, id", (self.namespace, id))
        return [Resource(r["id"], r["type"]) for r in rows]


def _lease(row):
    return Lease(row["id"], json.loads(row["labels"]), to_time(row["created_at"]))


def hold(db, namespace, lease, rtype, rid):
    """Inside a transaction: add (rtype, rid) to ``lease`` if one is given.
    NotFound if the lease does not exist (the caller's transaction rolls
    back, so nothing is created outside the lease)."""
    if lease is None:
        return
    if not db.conn.execute("SELECT 1 FROM leases WHERE namespace=? AND id=?",
                           (namespace, lease)).fetchone():
        raise NotFound(f"lease {lease}: not found in namespace {namespace}")
    db.conn.execute("INSERT OR IGNORE INTO lease_resources (namespace, lease, type, id) "
                    "VALUES (?, ?, ?, ?)", (namespace, lease, rtype, rid))
