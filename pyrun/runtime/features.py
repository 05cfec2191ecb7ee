"""``features``: what this runtime supports, in the JSON shape of
``runc features`` (runtime spec features.md)."""
import os

from pyrun.oci.spec import CAPABILITIES, NAMESPACE_TYPES
from pyrun.runtime.plan import _PROPAGATION, _RECURSIVE
from pyrun.mount import _FLAG_OPTIONS


def features():
    try:
        with open("/proc/sys/kernel/cap_last_cap") as f:
            last = int(f.read())
    except OSError:
        last = len(CAPABILITIES) - 1
    return {
        "ociVersionMin": "1.0.0",
        "ociVersionMax": "1.2.0",
        "hooks": ["prestart", "createRuntime", "createContainer", "startContainer",
                  "poststart", "poststop"],
        "mountOptions": sorted(set(_FLAG_OPTIONS) | set(_PROPAGATION) | set(_RECURSIVE)),
        "linux": {
            "namespaces": list(NAMESPACE_TYPES),
            "capabilities": list(CAPABILITIES[:last + 1]),
            "cgroup": {"v1": False, "v2": False, "systemd": False, "systemdUser": False},
            "seccomp": {"enabled": False},
            "apparmor": {"enabled": False},
            "selinux": {"enabled": os.path.exists("/sys/fs/selinux/enforce")},
            "intelRdt": {"enabled": False},
            "mountExtensions": {"idmap": {"enabled": False}},
        },
        "annotations": {"org.opencontainers.runc.version": "pyrun"},
    }
