"""Docker-style image references: parse, validate and normalise.

The grammar is the one of distribution's ``reference`` package (the
``docker/distribution`` grammar.go comment), and normalisation follows
``ParseDockerRef``: ``busybox`` becomes ``docker.io/library/busybox:latest``,
``index.docker.io`` is spelled ``docker.io``, and a reference with neither a
tag nor a digest gets the tag ``latest``.  A reference may carry both a tag
and a digest (``name:tag@sha256:…``); the digest is what gets fetched.
"""
import re
from dataclasses import dataclass

from pyrun.errdefs import InvalidArgument

DEFAULT_DOMAIN = "docker.io"
LEGACY_DEFAULT_DOMAIN = "index.docker.io"
OFFICIAL_REPO_PREFIX = "library/"
DEFAULT_TAG = "latest"
NAME_TOTAL_LENGTH_MAX = 255

_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_IPV6 = r"\[[a-fA-F0-9:]+\]"
_DOMAIN = rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|{_IPV6})(?::[0-9]+)?"
_PATH_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*"
_TAG = r"[\w][\w.-]{0,127}"
_DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9A-Fa-f]{32,}"

_DOMAIN_RE = re.compile(rf"^{_DOMAIN}$")
_PATH_RE = re.compile(rf"^{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*$")
_TAG_RE = re.compile(rf"^{_TAG}$")
_DIGEST_RE = re.compile(rf"^{_DIGEST}$")
_HEX64_RE = re.compile(r"^[a-f0-9]{64}$")


@dataclass(frozen=True)
class Reference:
    """A normalised reference.

    ``domain`` is the registry host (with port), ``path`` the repository
    inside it, ``tag`` and ``digest`` either may be None (not both once
    normalised).  ``str()`` gives the canonical form.
    """
    domain: str
    path: str
    tag: str | None = None
    digest: str | None = None

    @property
    def name(self):
        """``domain/path``: the repository name without tag or digest."""
        return f"{self.domain}/{self.path}"

    @property
    def object(self):
        """What to ask the registry's manifest endpoint for: the digest when
        there is one, else the tag."""
        return self.digest or self.tag

    def with_digest(self, digest):
        """The same repository pinned to ``digest`` (the tag is kept)."""
        return Reference(self.domain, self.path, self.tag, digest)

    def familiar(self):
        """The short form Docker prints (``busybox:latest``)."""
        name = self.name
        if self.domain == DEFAULT_DOMAIN:
            name = self.path
            if name.startswith(OFFICIAL_REPO_PREFIX) and "/" not in name[len(OFFICIAL_REPO_PREFIX):]:
                name = name[len(OFFICIAL_REPO_PREFIX):]
        return name + _suffix(self.tag, self.digest)

    def __str__(self):
        return self.name + _suffix(self.tag, self.digest)


def _suffix(tag, digest):
    return (f":{tag}" if tag else "") + (f"@{digest}" if digest else "")


def _split_domain(name):
    # Docker's rule: the first component is a registry host only if it looks
    # like one (has a dot or a port, is "localhost", or has upper case, which
    # repository paths may not).
    first, sep, rest = name.partition("/")
    if not sep or (first != "localhost" and not any(c in first for c in ".:")
                   and first == first.lower()):
        domain, path = DEFAULT_DOMAIN, name
    else:
        domain, path = first, rest
    if domain == LEGACY_DEFAULT_DOMAIN:
        domain = DEFAULT_DOMAIN
    if domain == DEFAULT_DOMAIN and "/" not in path:
        path = OFFICIAL_REPO_PREFIX + path
    return domain, path


def parse_reference(s, *, default_tag=True):
    """Parse and normalise a Docker-style reference.

    ``s`` is ``[domain[:port]/]path[:tag][@alg:hex]``.  Returns a
    :class:`Reference`; with ``default_tag`` a reference with neither tag nor
    digest gets ``latest``.  Raises InvalidArgument naming the part that is
    wrong (empty, bad domain, upper case in the path, bad tag, bad digest,
    a bare 64-hex id, name too long).
    """
    if not isinstance(s, str) or not s:
        raise InvalidArgument("invalid reference: empty")
    rest, digest = s, None
    if "@" in rest:
        rest, _, digest = rest.partition("@")
        if not _DIGEST_RE.match(digest):
            raise InvalidArgument(f"invalid reference {s!r}: bad digest {digest!r}")
    tag = None
    slash = rest.rfind("/")
    colon = rest.rfind(":")
    if colon > slash:
        rest, tag = rest[:colon], rest[colon + 1:]
        if not _TAG_RE.match(tag):
            raise InvalidArgument(f"invalid reference {s!r}: bad tag {tag!r} "
                                  "(letters, digits, _ . -, at most 128, not starting with . or -)")
    if not rest:
        raise InvalidArgument(f"invalid reference {s!r}: empty name")
    if _HEX64_RE.match(rest):
        raise InvalidArgument(f"invalid reference {s!r}: a 64-character hex string "
                              "is an image id, not a repository name")
    domain, path = _split_domain(rest)
    if not _DOMAIN_RE.match(domain):
        raise InvalidArgument(f"invalid reference {s!r}: bad registry host {domain!r}")
    if not _PATH_RE.match(path):
        why = "must be lower case" if path.lower() != path else \
            "components are [a-z0-9] separated by '.', '_', '__' or '-', joined by '/'"
        raise InvalidArgument(f"invalid reference {s!r}: bad repository name {path!r}: {why}")
    if len(f"{domain}/{path}") > NAME_TOTAL_LENGTH_MAX:
        raise InvalidArgument(f"invalid reference {s!r}: name longer than "
                              f"{NAME_TOTAL_LENGTH_MAX} characters")
    if default_tag and tag is None and digest is None:
        tag = DEFAULT_TAG
    return Reference(domain, path, tag, digest)
