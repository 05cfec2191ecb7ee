"""The metadata database schema, its version and its migrations.

The whole schema, in one place.  ``<root>/metadata.db`` is SQLite in WAL
mode; ``PRAGMA user_version`` holds the schema version.  Every timestamp is
integer nanoseconds since the epoch (UTC); every ``labels``, ``target``,
``runtime``, ``spec`` and ``extensions`` column is a JSON text.

    namespaces(name PK, labels, created_at, updated_at)
        Tenants.  A row appears on first use or by explicit create; delete
        only when no other table has a row for it.

    content(namespace, digest, size, labels, created_at, updated_at)
        PK (namespace, digest).  Which blobs of the shared store each tenant
        added.  The bytes live once in blobs/<alg>/<hex>; a blob leaves disk
        when no namespace has a row for it (metadata.gc).

    images(namespace, name, target, labels, created_at, updated_at)
        PK (namespace, name).  target = OCI descriptor
        {mediaType, digest, size[, annotations]}.  A GC root.

    containers(namespace, id, image, runtime, spec, snapshotter,
               snapshot_key, labels, extensions, created_at, updated_at)
        PK (namespace, id).  runtime = {name, options}.  A GC root; holds
        its snapshot (snapshotter, snapshot_key).

    leases(namespace, id, labels, created_at)
        PK (namespace, id).  A GC root until the RFC 3339 time in label
        containerd.io/gc.expire has passed; then GC deletes it.

    lease_resources(namespace, lease, type, id)
        PK (namespace, lease, type, id), cascades from leases.  type is
        "content" (id = digest), "ingests" (id = ref) or
        "snapshots/<snapshotter>" (id = key).

    snapshots(id INTEGER PK, namespace, snapshotter, key, parent,
              backend_key, labels, pending, created_at, updated_at)
        UNIQUE (namespace, snapshotter, key) and (snapshotter, backend_key).
        A tenant's snapshot key maps to the backend key
        "<namespace>/<random hex>/<key>": random, so that a key chosen in a
        transaction that was rolled back (its backend snapshot left as an
        orphan for GC) is never chosen again.  parent is the tenant's key
        ('' for none).  pending is '' or, while the row's active snapshot is
        being committed, JSON {name, backend_key, labels} of the committed
        snapshot to be; after a crash, recovery finishes or forgets the
        commit depending on what the backend holds.  Kind, mounts and usage
        come from the backend.

Content ingests are not tables: a tenant's ingest ref R is the backend
store's ref "<namespace>/R" (namespace names cannot contain '/').
"""

SCHEMA_VERSION = 1

# MIGRATIONS[n] takes a database from version n-1 to n.
MIGRATIONS = {
    1: """
    CREATE TABLE namespaces (
        name TEXT PRIMARY KEY, labels TEXT NOT NULL DEFAULT '{}',
        created_at INTEGER NOT NULL, updated_at INTEGER NOT NULL);
    CREATE TABLE content (
        namespace TEXT NOT NULL, digest TEXT NOT NULL, size INTEGER NOT NULL,
        labels TEXT NOT NULL DEFAULT '{}',
        created_at INTEGER NOT NULL, updated_at INTEGER NOT NULL,
        PRIMARY KEY (namespace, digest));
    CREATE INDEX content_digest ON content (digest);
    CREATE TABLE images (
        namespace TEXT NOT NULL, name TEXT NOT NULL, target TEXT NOT NULL,
        labels TEXT NOT NULL DEFAULT '{}',
        created_at INTEGER NOT NULL, updated_at INTEGER NOT NULL,
        PRIMARY KEY (namespace, name));
    CREATE TABLE containers (
        namespace TEXT NOT NULL, id TEXT NOT NULL, image TEXT NOT NULL,
        runtime TEXT NOT NULL, spec TEXT NOT NULL, snapshotter TEXT NOT NULL,
        snapshot_key TEXT NOT NULL, labels TEXT NOT NULL DEFAULT '{}',
        extensions TEXT NOT NULL DEFAULT '{}',
        created_at INTEGER NOT NULL, updated_at INTEGER NOT NULL,
        PRIMARY KEY (namespace, id));
    CREATE TABLE leases (
        namespace TEXT NOT NULL, id TEXT NOT NULL,
        labels TEXT NOT NULL DEFAULT '{}', created_at INTEGER NOT NULL,
        PRIMARY KEY (namespace, id));
    CREATE TABLE lease_resources (
        namespace TEXT NOT NULL, lease TEXT NOT NULL, type TEXT NOT NULL, id TEXT NOT NULL,
        PRIMARY KEY (namespace, lease, type, id),
        FOREIGN KEY (namespace, lease) REFERENCES leases (namespace, id) ON DELETE CASCADE);
    CREATE TABLE snapshots (
        id INTEGER PRIMARY KEY,
        namespace TEXT NOT NULL, snapshotter TEXT NOT NULL, key TEXT NOT NULL,
        parent TEXT NOT NULL, backend_key TEXT NOT NULL,
        labels TEXT NOT NULL DEFAULT '{}', pending TEXT NOT NULL DEFAULT '',
        created_at INTEGER NOT NULL, updated_at INTEGER NOT NULL,
        UNIQUE (namespace, snapshotter, key), UNIQUE (snapshotter, backend_key));
    """,
}
