"""Tenant namespaces (containerd ``namespaces.Store``)."""
import json
from dataclasses import dataclass, field
from datetime import datetime

from pyrun import labels as labelsmod
from pyrun.errdefs import AlreadyExists, FailedPrecondition, NotFound
from pyrun.metadata.db import now_ns, to_time, validate_namespace

# Tables that hold per-namespace objects, and the word for them.
_HOLDERS = (("images", "name", "images"), ("containers", "id", "containers"),
            ("leases", "id", "leases"), ("content", "digest", "content"),
            ("snapshots", "key", "snapshots"))


@dataclass(frozen=True)
class Namespace:
    """A tenant: ``name``, ``labels`` and times (aware UTC datetimes)."""

    name: str
    labels: dict = field(default_factory=dict)
    created_at: datetime = None
    updated_at: datetime = None


class Namespaces:
    """Create, list, label and delete namespaces."""

    def __init__(self, db):
        self.db = db

    def create(self, name, labels=None):
        """Create namespace ``name``; AlreadyExists, InvalidArgument."""
        validate_namespace(name)
        labels = labelsmod.validate(labels, f"namespace {name}")
        now = now_ns()
        with self.db.transaction() as c:
            if c.execute("SELECT 1 FROM namespaces WHERE name=?", (name,)).fetchone():
                raise AlreadyExists(f"namespace {name}: already exists")
            c.execute("INSERT INTO namespaces (name, labels, created_at, updated_at) "
                      "VALUES (?, ?, ?, ?)", (name, json.dumps(labels), now, now))
        return Namespace(name, labels, to_time(now), to_time(now))

    def get(self, name):
        """The :class:`Namespace` ``name``; NotFound."""
        rows = self.db.query("SELECT * FROM namespaces WHERE name=?", (name,))
        if not rows:
            raise NotFound(f"namespace {name}: not found")
        r = rows[0]
        return Namespace(r["name"], json.loads(r["labels"]), to_time(r["created_at"]),
                         to_time(r["updated_at"]))

    def list(self):
        """All namespace names, sorted."""
        return [r["name"] for r in self.db.query("SELECT name FROM namespaces ORDER BY name")]

    def labels(self, name):
        """The labels of namespace ``name``; NotFound."""
        return self.get(name).labels

    def set_label(self, name, key, value):
        """Set label ``key`` to ``value`` (empty value removes it); NotFound."""
        with self.db.transaction() as c:
            labels = self.get(name).labels
            if value:
                labels[key] = value
            else:
                labels.pop(key, None)
            labelsmod.validate(labels, f"namespace {name}")
            c.execute("UPDATE namespaces SET labels=?, updated_at=? WHERE name=?",
                      (json.dumps(labels), now_ns(), name))

    def delete(self, name):
        """Delete namespace ``name``.  FailedPrecondition if it still holds
        anything (the message lists what, by kind); NotFound."""
        with self.db.transaction() as c:
            self.get(name)
            left = []
            for table, key, word in _HOLDERS:
                rows = c.execute(f"SELECT {key} FROM {table} WHERE namespace=? ORDER BY {key}",
                                 (name,)).fetchall()
                if rows:
                    shown = ", ".join(r[0] for r in rows[:5]) + (", …" if len(rows) > 5 else "")
                    left.append(f"{len(rows)} {word} ({shown})")
            if left:
                raise FailedPrecondition(f"namespace {name} must be empty, but it still has "
                                         + "; ".join(left))
            c.execute("DELETE FROM namespaces WHERE name=?", (name,))
