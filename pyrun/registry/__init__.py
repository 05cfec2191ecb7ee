"""pyrun's OCI distribution client: references, resolve, auth, pull, push.

The public entry points::

    from pyrun.registry import Client, Hosts, pull, push, parse_reference

Protocol logic (references, challenges, manifests, platforms, digests) is in
plain functions in :mod:`.reference`, :mod:`.auth` and :mod:`.manifest`; the
HTTP side is :mod:`.client` over a swappable :mod:`.transport`.
"""
import importlib

# Imported on first use: the HTTP side pulls in requests (about 100 ms),
# which running a container from a local image never needs.
_EXPORTS = {
    "Client": "client", "Repository": "client", "pull": "fetch", "push": "push",
    "Descriptor": "manifest", "Platform": "manifest", "parse_platform": "manifest",
    "Reference": "reference", "parse_reference": "reference",
    "HostOptions": "transport", "Hosts": "transport",
}


def __getattr__(name):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'pyrun.registry' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"pyrun.registry.{module}"), name)
    # Importing pyrun.registry.push binds the *module* to this package's
    # ``push``; put the function back, and cache every export.
    globals()[name] = value
    return value


__all__ = ["Client", "Descriptor", "HostOptions", "Hosts", "Platform", "Reference",
           "Repository", "parse_platform", "parse_reference", "pull", "push"]
