"""Content-addressed storage of blobs (layers, manifests, configs).

:class:`ContentStore` is the local store on disk; the metadata layer
(:mod:`pyrun.metadata`) wraps it per tenant namespace with the same
interface.  :func:`write_blob` is the usual way to add one blob.
"""
from pyrun.content.digest import digester, parse_digest
from pyrun.content.store import ContentStore, Info, ReaderAt, Status, Writer, write_blob

__all__ = ["ContentStore", "Info", "ReaderAt", "Status", "Writer", "digester",
           "parse_digest", "write_blob"]
