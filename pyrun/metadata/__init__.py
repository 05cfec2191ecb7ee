"""Namespaced metadata over the shared stores (containerd ``core/metadata``).

:class:`DB` opens ``<root>/metadata.db`` (schema in
:mod:`pyrun.metadata.schema`) and hands out per-namespace stores with the
same interfaces as the backends; :func:`gc.collect` removes what nothing
references; :func:`check` reports corruption.
"""
from pyrun.metadata.check import check
from pyrun.metadata.containers import Container
from pyrun.metadata.db import DB
from pyrun.metadata.gc import collect
from pyrun.metadata.images import Image
from pyrun.metadata.leases import Lease, Resource

__all__ = ["DB", "Container", "Image", "Lease", "Resource", "check", "collect"]
