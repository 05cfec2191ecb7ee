"""Shared create/get/list/update/delete for the per-namespace record tables
(images, containers): each row is one frozen dataclass whose fields are the
table's columns, plus ``labels``, ``created_at`` and ``updated_at``."""
import dataclasses
import json

from pyrun import labels as labelsmod
from pyrun.errdefs import AlreadyExists, InvalidArgument, NotFound
from pyrun.filters import parse as parse_filters
from pyrun.metadata.db import dumps, now_ns, to_time, validate_namespace

_TIMES = ("created_at", "updated_at")


class RecordTable:
    """Subclasses set ``table``, ``kind`` (a word for messages), ``record``
    (the dataclass, key field first), ``json_columns``, ``updatable`` (the
    fields besides labels that ``update`` may change) and implement
    ``validate(obj)`` and ``field(obj, path)`` (the filter adaptor)."""

    table = kind = ""
    record = None
    json_columns = ()
    updatable = ()

    def __init__(self, db, namespace):
        self.db = db
        self.namespace = validate_namespace(namespace)
        self.columns = [f.name for f in dataclasses.fields(self.record) if f.name not in _TIMES]
        self.key = self.columns[0]

    def _load(self, row):
        values = {c: json.loads(row[c]) if c in self.json_columns or c == "labels" else row[c]
                  for c in self.columns}
        return self.record(**values, created_at=to_time(row["created_at"]),
                           updated_at=to_time(row["updated_at"]))

    def _values(self, obj):
        return [dumps(getattr(obj, c)) if c in self.json_columns or c == "labels"
                else getattr(obj, c) for c in self.columns]

    def _select(self, key):
        return self.db.conn.execute(f"SELECT * FROM {self.table} WHERE namespace=? AND {self.key}=?",
                                    (self.namespace, key)).fetchone()

    def get(self, key):
        """The record ``key``; NotFound if absent."""
        rows = self.db.query(f"SELECT * FROM {self.table} WHERE namespace=? AND {self.key}=?",
                             (self.namespace, key))
        row = rows[0] if rows else None
        if row is None:
            raise NotFound(f"{self.kind} {key!r}: not found in namespace {self.namespace}")
        return self._load(row)

    def list(self, filters=()):
        """Records matching containerd filter strings."""
        match = parse_filters(filters)
        rows = self.db.query(f"SELECT * FROM {self.table} WHERE namespace=? ORDER BY {self.key}",
                             (self.namespace,))
        return [r for r in map(self._load, rows) if match(r, self.field)]

    def create(self, obj):
        """Store ``obj``; AlreadyExists if its key is taken, InvalidArgument
        if it is malformed.  Returns it with times set."""
        self.validate(obj)
        obj = dataclasses.replace(obj, labels=labelsmod.validate(
            obj.labels, f"{self.kind} {getattr(obj, self.key)!r}"))
        now = now_ns()
        with self.db.transaction() as c:
            self.db.ensure_namespace(self.namespace)
            if self._select(getattr(obj, self.key)) is not None:
                raise AlreadyExists(f"{self.kind} {getattr(obj, self.key)!r}: already exists "
                                    f"in namespace {self.namespace}")
            cols = ["namespace", *self.columns, *_TIMES]
            c.execute(f"INSERT INTO {self.table} ({', '.join(cols)}) "
                      f"VALUES ({', '.join('?' * len(cols))})",
                      (self.namespace, *self._values(obj), now, now))
        return dataclasses.replace(obj, created_at=to_time(now), updated_at=to_time(now))

    def update(self, obj, fieldpaths=None):
        """Update the record named by ``obj``'s key along ``fieldpaths``
        (``labels``, ``labels.<key>`` and the table's updatable fields; none:
        all of them).  NotFound, or InvalidArgument for another field."""
        key = getattr(obj, self.key)
        what = f"{self.kind} {key!r}"
        with self.db.transaction() as c:
            current = self.get(key)
            labels = labelsmod.apply_update(current.labels, obj.labels, fieldpaths, what,
                                            self.updatable)
            changes = {f: getattr(obj, f) for f in self.updatable
                       if not fieldpaths or f in fieldpaths}
            new = dataclasses.replace(current, labels=labels, **changes)
            self.validate(new)
            now = now_ns()
            sets = ", ".join(f"{col}=?" for col in self.columns[1:])
            c.execute(f"UPDATE {self.table} SET {sets}, updated_at=? WHERE namespace=? AND "
                      f"{self.key}=?", (*self._values(new)[1:], now, self.namespace, key))
        return dataclasses.replace(new, updated_at=to_time(now))

    def delete(self, key):
        """Delete record ``key``; NotFound if absent."""
        with self.db.transaction() as c:
            cur = c.execute(f"DELETE FROM {self.table} WHERE namespace=? AND {self.key}=?",
                            (self.namespace, key))
            if not cur.rowcount:
                raise NotFound(f"{self.kind} {key!r}: not found in namespace {self.namespace}")

    def validate(self, obj):
        raise NotImplementedError

    def field(self, obj, path):
        raise NotImplementedError


def check_json_object(value, what):
    """InvalidArgument unless ``value`` is a JSON-serialisable dict."""
    if not isinstance(value, dict):
        raise InvalidArgument(f"{what} must be a JSON object, got {type(value).__name__}")
    try:
        json.dumps(value)
    except (TypeError, ValueError) as e:
        raise InvalidArgument(f"{what} is not JSON-serialisable: {e}") from None
