"""Manifests, indexes, descriptors and platforms: pure protocol logic.

Everything here works on bytes and dicts, never on the network, so tests
drive it with canned documents.  Sources: the OCI image spec (descriptor.md,
manifest.md, image-index.md, config.md "Platform" properties), Docker's
Image Manifest V2 Schema 2, and containerd's ``platforms`` package for
normalisation and matching.
"""
import json
import platform as _platform
from dataclasses import dataclass, field

from pyrun.content.digest import digest_bytes, parse_digest
from pyrun.errdefs import InvalidArgument, NotFound, NotImplementedYet

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_SCHEMA1 = "application/vnd.docker.distribution.manifest.v1+json"
DOCKER_SCHEMA1_SIGNED = "application/vnd.docker.distribution.manifest.v1+prettyjws"

MANIFEST_TYPES = (OCI_MANIFEST, DOCKER_MANIFEST)
INDEX_TYPES = (OCI_INDEX, DOCKER_MANIFEST_LIST)
# Every type we can use, for the Accept header.  docker-registry 2.8 answers
# 404 for an OCI manifest unless the OCI type is accepted, and rewrites a
# schema2 manifest to schema1 when nothing is accepted.
ACCEPT = ", ".join((OCI_INDEX, DOCKER_MANIFEST_LIST, OCI_MANIFEST, DOCKER_MANIFEST))

GC_REF_CONTENT = "containerd.io/gc.ref.content"


# --- digests -------------------------------------------------------------

def verify_digest(data, digest, what="content"):
    """Check that ``data`` (bytes) hashes to ``digest``.  Raises
    InvalidArgument naming ``what``, the expected and the actual digest."""
    alg, _ = parse_digest(digest)
    actual = digest_bytes(data, alg)
    if actual != digest:
        raise InvalidArgument(f"{what}: digest mismatch: expected {digest}, got {actual}")


MAX_INDEX_DEPTH = 4  # indexes nested in indexes, at most


# --- descriptors and platforms -----------------------------------------------

@dataclass(frozen=True)
class Platform:
    """An OCI platform (image-index.md).  Compare normalised values only."""
    os: str
    architecture: str
    variant: str = ""
    os_version: str = ""
    os_features: tuple = ()

    def __str__(self):
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)

    @classmethod
    def from_dict(cls, d):
        return cls(d.get("os", ""), d.get("architecture", ""), d.get("variant", ""),
                   d.get("os.version", ""), tuple(d.get("os.features") or ()))

    def to_dict(self):
        d = {"architecture": self.architecture, "os": self.os}
        if self.variant:
            d["variant"] = self.variant
        if self.os_version:
            d["os.version"] = self.os_version
        if self.os_features:
            d["os.features"] = list(self.os_features)
        return d


_ARCH_ALIASES = {"x86_64": "amd64", "x86-64": "amd64", "aarch64": "arm64",
                 "i386": "386", "i686": "386", "armhf": "arm", "armel": "arm"}


def normalize_platform(p):
    """containerd's ``platforms.Normalize``: architecture aliases (x86_64,
    aarch64, …), lower case, arm's default variant v7, arm64's v8, amd64's v1
    dropped."""
    os_ = (p.os or "").lower()
    arch = _ARCH_ALIASES.get((p.architecture or "").lower(), (p.architecture or "").lower())
    variant = (p.variant or "").lower()
    if arch == "arm64" and variant in ("", "8"):
        variant = "v8"
    elif arch == "arm":
        if variant in ("", "7"):
            variant = "v7"
        elif variant in ("5", "6", "8"):
            variant = "v" + variant
    elif arch == "amd64" and variant == "v1":
        variant = ""
    return Platform(os_, arch, variant, p.os_version, p.os_features)


def parse_platform(s):
    """``"linux/arm64/v8"``, ``"linux/amd64"`` or ``"linux"`` -> a normalised
    Platform (a lone OS takes the host's architecture).  Raises
    InvalidArgument for an empty or over-long specifier."""
    parts = s.split("/") if s else []
    if not parts or len(parts) > 3 or not all(parts):
        raise InvalidArgument(f"invalid platform {s!r}: expected os[/arch[/variant]]")
    if len(parts) == 1:
        host = host_platform()
        return normalize_platform(Platform(parts[0], host.architecture, host.variant))
    return normalize_platform(Platform(*parts))


def host_platform():
    """The platform this process runs on, normalised (``uname -m``)."""
    machine = _platform.machine()
    variant = "v7" if machine.startswith("armv7") else "v6" if machine.startswith("armv6") else ""
    arch = "arm" if machine.startswith("armv") else machine
    return normalize_platform(Platform("linux", arch, variant))


def platform_matches(want, have):
    """Whether ``have`` (an index entry's platform, or None) satisfies the
    wanted platform: same OS, architecture and variant once normalised."""
    if have is None:
        return False
    w, h = normalize_platform(want), normalize_platform(have)
    return (w.os, w.architecture, w.variant) == (h.os, h.architecture, h.variant)


@dataclass(frozen=True)
class Descriptor:
    """An OCI content descriptor (descriptor.md).  ``size`` is in bytes."""
    media_type: str
    digest: str
    size: int
    platform: Platform | None = None
    annotations: dict = field(default_factory=dict, compare=False, hash=False)
    urls: tuple = ()

    @classmethod
    def from_dict(cls, d, where="descriptor"):
        """Build from a JSON object; InvalidArgument names ``where`` when a
        required field is missing or of the wrong type."""
        if not isinstance(d, dict):
            raise InvalidArgument(f"{where}: not a JSON object")
        mt, dg, size = d.get("mediaType"), d.get("digest"), d.get("size")
        if not isinstance(mt, str) or not isinstance(dg, str) \
                or not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise InvalidArgument(f"{where}: needs mediaType, digest and a non-negative size")
        try:
            parse_digest(dg)
        except InvalidArgument as e:
            raise InvalidArgument(f"{where}: {e}") from None
        plat = d.get("platform")
        return cls(mt, dg, size, Platform.from_dict(plat) if isinstance(plat, dict) else None,
                   dict(d.get("annotations") or {}), tuple(d.get("urls") or ()))

    def to_dict(self):
        d = {"mediaType": self.media_type, "digest": self.digest, "size": self.size}
        if self.platform:
            d["platform"] = self.platform.to_dict()
        if self.annotations:
            d["annotations"] = dict(self.annotations)
        if self.urls:
            d["urls"] = list(self.urls)
        return d


# --- manifests -----------------------------------------------------------------

@dataclass(frozen=True)
class Manifest:
    """An image manifest (OCI or Docker schema2): config and layers."""
    media_type: str
    config: Descriptor
    layers: tuple


@dataclass(frozen=True)
class Index:
    """An image index or Docker manifest list: a list of manifests."""
    media_type: str
    manifests: tuple


def is_index(media_type):
    return media_type in INDEX_TYPES


def is_manifest(media_type):
    return media_type in MANIFEST_TYPES


def parse_manifest(data, media_type=None, what="manifest"):
    """Parse manifest or index bytes.

    ``media_type`` is the Content-Type the registry sent or the descriptor's
    type; the document's own ``mediaType`` wins when present.  A document
    without one is told apart by shape (``manifests`` vs ``layers``), as the
    OCI spec allows.  Returns a :class:`Manifest` or :class:`Index`.
    Raises NotImplementedYet for Docker schema1, InvalidArgument for
    anything malformed or of an unknown type (naming ``what``).
    """
    if media_type in (DOCKER_SCHEMA1, DOCKER_SCHEMA1_SIGNED):
        raise NotImplementedYet(f"{what}: Docker schema1 manifests ({media_type}) are unsupported")
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise InvalidArgument(f"{what}: not valid JSON: {e}") from None
    if not isinstance(doc, dict):
        raise InvalidArgument(f"{what}: not a JSON object")
    if doc.get("schemaVersion") == 1:
        raise NotImplementedYet(f"{what}: Docker schema1 manifests are unsupported")
    mt = doc.get("mediaType") or media_type
    if not mt or mt in ("application/json", "application/octet-stream"):
        mt = OCI_INDEX if "manifests" in doc else OCI_MANIFEST if "layers" in doc else None
    if mt in INDEX_TYPES:
        entries = doc.get("manifests")
        if not isinstance(entries, list):
            raise InvalidArgument(f"{what}: index without a manifests list")
        return Index(mt, tuple(Descriptor.from_dict(d, f"{what}: manifests[{i}]")
                               for i, d in enumerate(entries)))
    if mt in MANIFEST_TYPES:
        layers = doc.get("layers")
        if not isinstance(layers, list):
            raise InvalidArgument(f"{what}: manifest without a layers list")
        return Manifest(mt, Descriptor.from_dict(doc.get("config"), f"{what}: config"),
                        tuple(Descriptor.from_dict(d, f"{what}: layers[{i}]")
                              for i, d in enumerate(layers)))
    raise InvalidArgument(f"{what}: unsupported media type {mt!r}")


def select_manifests(index, platform=None, all_platforms=False):
    """The index entries to pull, in index order.

    ``platform`` is a :class:`Platform` (default: the host's);
    ``all_platforms`` keeps every entry.  Nested indexes are kept so the
    caller can descend into them.  Raises NotFound when no entry matches,
    listing what the index offers.
    """
    if all_platforms:
        return list(index.manifests)
    want = platform or host_platform()
    chosen = [d for d in index.manifests
              if is_index(d.media_type) or platform_matches(want, d.platform)]
    if not chosen:
        offered = sorted({str(d.platform) for d in index.manifests if d.platform})
        raise NotFound(f"no manifest for platform {want} (index offers: {', '.join(offered) or 'none'})")
    return chosen


def children(doc):
    """The descriptors a manifest or index refers to, in order: config then
    layers, or the index entries."""
    if isinstance(doc, Index):
        return list(doc.manifests)
    return [doc.config, *doc.layers]


def gc_labels(doc, kept=None):
    """containerd's garbage-collection labels for a stored manifest or index.

    A manifest gets ``containerd.io/gc.ref.content.config`` and
    ``….l.<i>`` per layer; an index ``….m.<i>`` per entry in ``kept`` (the
    entries actually pulled; default all).  Source: containerd
    ``images.ChildGCLabels``.
    """
    if isinstance(doc, Index):
        entries = doc.manifests if kept is None else kept
        return {f"{GC_REF_CONTENT}.m.{i}": d.digest for i, d in enumerate(entries)}
    labels = {f"{GC_REF_CONTENT}.config": doc.config.digest}
    labels.update({f"{GC_REF_CONTENT}.l.{i}": d.digest for i, d in enumerate(doc.layers)})
    return labels
