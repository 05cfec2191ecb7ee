"""pyrun's OCI distribution client: references, resolve, auth, pull, push.

The public entry points::

    from pyrun.registry import Client, Hosts, pull, push, parse_reference

Protocol logic (references, challenges, manifests, platforms, digests) is in
plain functions in :mod:`.reference`, :mod:`.auth` and :mod:`.manifest`; the
HTTP side is :mod:`.client` over a swappable :mod:`.transport`.
"""
from pyrun.registry.client import Client, Repository
from pyrun.registry.fetch import pull
from pyrun.registry.manifest import Descriptor, Platform, parse_platform
from pyrun.registry.push import push
from pyrun.registry.reference import Reference, parse_reference
from pyrun.registry.transport import HostOptions, Hosts

__all__ = ["Client", "Descriptor", "HostOptions", "Hosts", "Platform", "Reference",
           "Repository", "parse_platform", "parse_reference", "pull", "push"]
