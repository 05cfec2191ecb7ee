"""CNI (Container Network Interface, spec 1.0.0) for pyrun: attach a
container's network namespace to a network described by a conflist, by
running the conflist's plugins (from Debian's containernetworking-plugins in
/usr/lib/cni: bridge, host-local, loopback, portmap, firewall, ...).

    from pyrun.network import cni
    res = cni.attach(conflist_json, "c1", "/run/pyrun/netns/c1", "eth0")
    res.ips[0].address            # '10.88.0.2/16'
    cni.detach(conflist_json, "c1", "/run/pyrun/netns/c1", "eth0")

Modules: config (conflist parsing), result (typed results), invoke (one
plugin call: environment, stdin, errors), cache (results kept for DEL),
chain (ADD/CHECK/DEL of a chain, VERSION).
"""
from pyrun.network.cni.cache import DEFAULT_CACHE_DIR
from pyrun.network.cni.chain import (DEFAULT_CNI_PATH, PluginInfo, attach, cached_result, check,
                                     detach, version)
from pyrun.network.cni.config import NetworkConfigList, load, parse
from pyrun.network.cni.result import DNS, Interface, IPConfig, Result, RouteConfig

__all__ = ["attach", "detach", "check", "version", "cached_result", "load", "parse",
           "NetworkConfigList", "Result", "Interface", "IPConfig", "RouteConfig", "DNS",
           "PluginInfo", "DEFAULT_CNI_PATH", "DEFAULT_CACHE_DIR"]
