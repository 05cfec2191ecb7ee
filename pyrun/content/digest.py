"""Digest strings: ``<algorithm>:<hex>`` as in the OCI image spec
(descriptor.md, "Digests").

Plain functions, no I/O, so the registry client and the stores share one
definition of what a valid digest is.
"""
import hashlib
import re

from pyrun.errdefs import InvalidArgument

# Hex length of each supported algorithm's encoded digest.
ALGORITHMS = {"sha256": 64, "sha384": 96, "sha512": 128}

_ENCODED = re.compile(r"[a-f0-9]+")


def parse_digest(s):
    """Split ``"sha256:<64 hex>"`` into ``("sha256", "<hex>")``.

    Only lower-case hex of the algorithm's exact length is accepted (OCI
    image spec: registered algorithms sha256 and sha512; sha384 also taken).
    Raises InvalidArgument naming the bad string for anything else.
    """
    if not isinstance(s, str):
        raise InvalidArgument(f"invalid digest {s!r}: not a string")
    alg, sep, enc = s.partition(":")
    if not sep:
        raise InvalidArgument(f"invalid digest {s!r}: missing '<algorithm>:'")
    if alg not in ALGORITHMS:
        raise InvalidArgument(f"invalid digest {s!r}: unsupported algorithm {alg!r} "
                              f"(supported: {', '.join(ALGORITHMS)})")
    if len(enc) != ALGORITHMS[alg] or not _ENCODED.fullmatch(enc):
        raise InvalidArgument(f"invalid digest {s!r}: {alg} needs {ALGORITHMS[alg]} "
                              "lower-case hex characters")
    return alg, enc


def digester(algorithm="sha256"):
    """A fresh hashlib object for ``algorithm``; InvalidArgument if unknown."""
    if algorithm not in ALGORITHMS:
        raise InvalidArgument(f"unsupported digest algorithm {algorithm!r} "
                              f"(supported: {', '.join(ALGORITHMS)})")
    return hashlib.new(algorithm)


def digest_bytes(data, algorithm="sha256"):
    """The digest string of ``data`` (bytes)."""
    h = digester(algorithm)
    h.update(data)
    return f"{algorithm}:{h.hexdigest()}"
