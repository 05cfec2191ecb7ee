"""Network configuration lists (CNI spec 1.0.0, "Configuration format"),
parsed once into a typed, frozen :class:`NetworkConfigList`.

A conflist is ``{"cniVersion", "name", "disableCheck"?, "plugins": [...]}``
and each plugin entry has at least ``type`` (the plugin binary's name).  A
single-plugin ``.conf`` (``type`` at the top, no ``plugins``) is accepted
and read as a list of one, as libcni's ``ConfListFromConf`` does.
"""
import json
import os
import re

from pyrun.errdefs import InvalidArgument, NotFound
from pyrun.record import Frozen

SUPPORTED_VERSIONS = ("0.3.0", "0.3.1", "0.4.0", "1.0.0")
# CNI spec: network names and container ids.
NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$")


class NetworkConfigList(Frozen):
    """``cni_version`` (str), ``name`` (the network's name), ``disable_check``
    (bool), ``plugins`` (tuple of the plugin entries as dicts, in chain
    order) and ``raw`` (the document as bytes, kept for the cache)."""
    __slots__ = ("cni_version", "name", "disable_check", "plugins", "raw")

    def plugin_config(self, i):
        """The stdin document for plugin ``i`` before runtime fields are
        added: its entry plus the list's ``name`` and ``cniVersion`` (spec
        1.0.0, "Deriving execution configuration from plugin configuration")."""
        return {**self.plugins[i], "name": self.name, "cniVersion": self.cni_version}


def json_object(data, what):
    """``data`` (a dict, or JSON bytes/str) as a dict; InvalidArgument
    naming ``what`` if it is not JSON or not an object."""
    if isinstance(data, dict):
        return data
    try:
        doc = json.loads(data)
    except ValueError as e:
        raise InvalidArgument(f"{what}: not JSON: {e}") from None
    if not isinstance(doc, dict):
        raise InvalidArgument(f"{what}: want a JSON object")
    return doc


def version_tuple(v):
    return tuple(int(x) for x in v.split("."))


def parse(data):
    """Parse a conflist (or single-plugin conf) from bytes, str or dict.
    Raises InvalidArgument naming the field that is wrong."""
    raw = json.dumps(data).encode() if isinstance(data, dict) else \
        data.encode() if isinstance(data, str) else bytes(data)
    doc = json_object(data, "CNI network config")
    if "plugins" not in doc and "type" in doc:
        single = {k: v for k, v in doc.items() if k not in ("cniVersion", "name")}
        doc = {"cniVersion": doc.get("cniVersion"), "name": doc.get("name"), "plugins": [single]}
    version = doc.get("cniVersion")
    if version not in SUPPORTED_VERSIONS:
        raise InvalidArgument(f"CNI network config: cniVersion {version!r} is not supported "
                              f"(supported: {', '.join(SUPPORTED_VERSIONS)})")
    name = doc.get("name")
    if not isinstance(name, str) or not NAME.match(name):
        raise InvalidArgument(f"CNI network config: invalid network name {name!r} "
                              "(want [a-zA-Z0-9][a-zA-Z0-9_.-]*)")
    plugins = doc.get("plugins")
    if not isinstance(plugins, list) or not plugins:
        raise InvalidArgument(f"CNI network config {name}: 'plugins' must be a non-empty list")
    for i, p in enumerate(plugins):
        if not isinstance(p, dict):
            raise InvalidArgument(f"CNI network config {name}: plugins[{i}] is not an object")
        validate_type(p.get("type"), f"CNI network config {name}: plugins[{i}]")
    disable = doc.get("disableCheck", False)
    if not isinstance(disable, bool):
        raise InvalidArgument(f"CNI network config {name}: disableCheck must be a boolean")
    return NetworkConfigList(version, name, disable, tuple(plugins), raw)


def load(path):
    """Read and :func:`parse` a conflist file.  NotFound if it is missing."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise NotFound(f"CNI network config {path} not found") from None
    try:
        return parse(data)
    except InvalidArgument as e:
        raise InvalidArgument(f"{path}: {e}") from None


def validate_type(t, where):
    """A plugin type names a binary in CNI_PATH: one path component."""
    if not isinstance(t, str) or not t or "/" in t or t in (".", "..") or "\0" in t:
        raise InvalidArgument(f"{where}: invalid plugin type {t!r}")


def validate_container_id(cid):
    """CNI spec: a non-empty id of letters, digits, ``_``, ``.``, ``-``,
    starting with a letter or digit.  Raises InvalidArgument."""
    if not isinstance(cid, str) or not NAME.match(cid):
        raise InvalidArgument(f"invalid CNI container id {cid!r} (want [a-zA-Z0-9][a-zA-Z0-9_.-]*)")


def find_plugin(t, cni_path):
    """The path of the executable ``t`` in the first directory of
    ``cni_path`` (a list) that has it.  NotFound names the directories."""
    for d in cni_path:
        p = os.path.join(d, t)
        if os.path.isfile(p) and os.access(p, os.X_OK):
            return p
    raise NotFound(f"CNI plugin {t!r} not found in {':'.join(cni_path)}")
