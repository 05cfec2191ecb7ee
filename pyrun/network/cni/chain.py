"""Running a conflist's plugin chain for a container: ADD, CHECK, DEL
(spec 1.0.0, "Network configuration lists" and "Attachment lifecycle"),
and VERSION for one plugin.

An attachment is (network name, container id, interface name).  ADD runs
the plugins in order, each getting the previous one's result as
``prevResult``; the last result is the attachment's, and is cached.  DEL
runs them in reverse with the cached result, and works when the
container's namespace is gone (see :func:`detach`).  If an ADD fails, the
plugins that ran (the failing one included) get a DEL, so nothing is left
half-attached; the error raised is the ADD's.  Plugins run in the caller's network namespace, or in
``host_netns`` if given: that is where e.g. the bridge plugin makes its
bridge and iptables rules.
"""
import contextlib
import os

from pyrun.errdefs import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from pyrun.network import netns as _netns
from pyrun.network.cni import cache, config, invoke, result
from pyrun.record import Frozen

DEFAULT_CNI_PATH = ("/usr/lib/cni", "/opt/cni/bin")


class PluginInfo(Frozen):
    """VERSION's answer: ``cni_version`` and ``supported_versions``."""
    __slots__ = ("cni_version", "supported_versions")


def _conflist(network):
    if isinstance(network, config.NetworkConfigList):
        return network
    return config.parse(network)


def _check_common(conf, container_id, ifname, cni_path):
    # links and address load pyroute2 (over 100 ms): only when CNI is used.
    from pyrun.network.links import validate_ifname
    config.validate_container_id(container_id)
    validate_ifname(ifname)
    # Every binary before the first call: a missing one fails with nothing done.
    return [config.find_plugin(p["type"], cni_path) for p in conf.plugins]


def _stdin(conf, i, prev, capability_args):
    doc = conf.plugin_config(i)
    if prev is not None:
        doc["prevResult"] = prev
    caps = doc.get("capabilities") or {}
    runtime = {k: v for k, v in (capability_args or {}).items() if caps.get(k)}
    if runtime:
        doc["runtimeConfig"] = runtime
    return doc


def _run_del(conf, paths, upto, container_id, netns_path, ifname, args, capability_args,
             cni_path, prev, host_netns):
    # Reverse order; returns the errors so that a failed ADD can report both.
    errors = []
    env = invoke.environment("DEL", container_id, netns_path, ifname, args, cni_path)
    for i in reversed(range(upto)):
        try:
            invoke.run(paths[i], "DEL", _stdin(conf, i, prev, capability_args), env,
                       conf.name, host_netns)
        except Exception as e:  # keep going: DEL must reach every plugin
            errors.append(e)
    return errors


def attach(network, container_id, netns_path, ifname="eth0", args=None, capability_args=None,
           cni_path=DEFAULT_CNI_PATH, cache_dir=cache.DEFAULT_CACHE_DIR, host_netns=None):
    """CNI ADD of the container (``container_id``, its network namespace at
    ``netns_path``) to ``network`` (a conflist: NetworkConfigList, JSON
    bytes/str or dict) as interface ``ifname``.  ``args`` become CNI_ARGS
    (dict), ``capability_args`` the ``runtimeConfig`` of plugins that
    declare those capabilities (e.g. ``{"portMappings": [...]}``).
    Returns the typed :class:`~pyrun.network.cni.result.Result` and caches it.

    Raises InvalidArgument (bad conflist, id, ifname, or a plugin's code
    1/2/4/6/7), NotFound (netns or plugin binary missing; code 3),
    AlreadyExists (an attachment with this key is cached), Unavailable
    (code 11), FailedPrecondition (other plugin errors).
    """
    conf = _conflist(network)
    paths = _check_common(conf, container_id, ifname, cni_path)
    if not os.path.isabs(netns_path) or not _netns.is_pinned(netns_path):
        raise NotFound(f"network namespace {netns_path} not found (want the absolute path of one)")
    if cache.load(cache_dir, conf.name, container_id, ifname) is not None:
        raise AlreadyExists(f"container {container_id} is already attached to network "
                            f"{conf.name} as {ifname}")
    env = invoke.environment("ADD", container_id, netns_path, ifname, args, cni_path)
    prev = None
    for i, path in enumerate(paths):
        try:
            out = invoke.run(path, "ADD", _stdin(conf, i, prev, capability_args), env,
                             conf.name, host_netns)
            if out is None:
                raise InvalidArgument(f"CNI plugin {conf.plugins[i]['type']} ADD on network "
                                      f"{conf.name}: no result on stdout")
            result.parse(out)
        except Exception as e:
            undo = _run_del(conf, paths, i + 1, container_id, netns_path, ifname, args,
                            capability_args, cni_path, prev, host_netns)
            if undo:
                e.add_note("cleanup after the failed ADD also failed: " + "; ".join(map(str, undo)))
            raise
        prev = out
    cache.save(cache_dir, conf, container_id, ifname, args or {}, capability_args or {}, prev)
    return result.parse(prev)


@contextlib.contextmanager
def _stand_in(prev, ifname):
    # The container's namespace is gone.  The bridge plugin (1.1.1) reads
    # the addresses whose ipMasq rules it must remove from the container's
    # interface, not from prevResult, so with no namespace it would leave
    # them behind.
    res = result.parse(prev) if prev else None
    cidrs = [ip.address for ip in res.ips if ip.interface is not None
             and res.interfaces[ip.interface].name == ifname
             and res.interfaces[ip.interface].sandbox] if res else []
    if not cidrs:
        yield ""
        return
    from pyrun.network import address, links
    with _netns.scratch() as ns:
        peer = "standin0" if ifname != "standin0" else "standin1"
        links.add_veth(ifname, peer, netns=ns)
        for cidr in cidrs:
            address.add_address(ifname, cidr, netns=ns)
        yield ns


def detach(network, container_id, netns_path, ifname="eth0", args=None, capability_args=None,
           cni_path=DEFAULT_CNI_PATH, cache_dir=cache.DEFAULT_CACHE_DIR, host_netns=None):
    """CNI DEL of the attachment, plugins in reverse order, each with the
    cached result as ``prevResult``; ``args`` and ``capability_args``
    default to those cached at ADD.  Works without a cache entry (no
    prevResult) and when ``netns_path`` no longer exists, so it can be
    repeated: with the namespace gone, the plugins get a scratch namespace
    holding an interface ``ifname`` with the cached addresses (the bridge
    plugin finds the NAT rules to remove through them), or an empty
    CNI_NETNS when nothing is cached, as containerd's CRI passes for a
    closed sandbox.  Forgets the cache entry once every plugin succeeded.
    Raises as :func:`attach`: the first plugin error (all plugins are still
    called, the others are added as notes).
    """
    conf = _conflist(network)
    paths = _check_common(conf, container_id, ifname, cni_path)
    entry = cache.load(cache_dir, conf.name, container_id, ifname)
    prev = entry["result"] if entry else None
    if entry:
        args = entry.get("cniArgs") if args is None else args
        capability_args = entry.get("capabilityArgs") if capability_args is None else capability_args
    if netns_path and _netns.is_pinned(netns_path):
        errors = _run_del(conf, paths, len(paths), container_id, netns_path, ifname, args,
                          capability_args, cni_path, prev, host_netns)
    else:
        with _stand_in(prev, ifname) as ns:
            errors = _run_del(conf, paths, len(paths), container_id, ns, ifname, args,
                              capability_args, cni_path, prev, host_netns)
    if errors:
        for other in errors[1:]:
            errors[0].add_note(f"also: {other}")
        raise errors[0]
    cache.remove(cache_dir, conf.name, container_id, ifname)


def check(network, container_id, netns_path, ifname="eth0", args=None, capability_args=None,
          cni_path=DEFAULT_CNI_PATH, cache_dir=cache.DEFAULT_CACHE_DIR, host_netns=None):
    """CNI CHECK of the attachment: every plugin in order, with the cached
    result as ``prevResult``.  A no-op if the conflist sets
    ``disableCheck``.  Raises InvalidArgument (cniVersion below 0.4.0),
    NotFound (nothing cached, netns gone), or a plugin's error."""
    conf = _conflist(network)
    paths = _check_common(conf, container_id, ifname, cni_path)
    if config.version_tuple(conf.cni_version) < (0, 4, 0):
        raise InvalidArgument(f"CNI CHECK needs cniVersion 0.4.0 or later, network {conf.name} "
                              f"has {conf.cni_version}")
    if conf.disable_check:
        return
    entry = cache.load(cache_dir, conf.name, container_id, ifname)
    if entry is None:
        raise NotFound(f"container {container_id} has no cached attachment to network "
                       f"{conf.name} as {ifname}")
    if not _netns.is_pinned(netns_path):
        raise NotFound(f"network namespace {netns_path} not found")
    args = entry.get("cniArgs") if args is None else args
    capability_args = entry.get("capabilityArgs") if capability_args is None else capability_args
    env = invoke.environment("CHECK", container_id, netns_path, ifname, args, cni_path)
    for i, path in enumerate(paths):
        invoke.run(path, "CHECK", _stdin(conf, i, entry["result"], capability_args), env,
                   conf.name, host_netns)


def version(plugin_type, cni_version="1.0.0", cni_path=DEFAULT_CNI_PATH):
    """CNI VERSION of the plugin ``plugin_type``: what it supports.  Raises
    NotFound (no such binary), FailedPrecondition (a bad answer)."""
    config.validate_type(plugin_type, "CNI VERSION")
    path = config.find_plugin(plugin_type, cni_path)
    out = invoke.run(path, "VERSION", {"cniVersion": cni_version},
                     invoke.environment("VERSION", cni_path=cni_path))
    if not isinstance(out, dict) or not isinstance(out.get("supportedVersions"), list):
        raise FailedPrecondition(f"CNI plugin {plugin_type} VERSION: unexpected answer {out!r}")
    return PluginInfo(out.get("cniVersion"), tuple(out["supportedVersions"]))


def cached_result(network_name, container_id, ifname="eth0", cache_dir=cache.DEFAULT_CACHE_DIR):
    """The cached Result of an attachment, or None."""
    entry = cache.load(cache_dir, network_name, container_id, ifname)
    return result.parse(entry["result"]) if entry else None
