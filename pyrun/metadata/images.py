"""Images: a name bound to a target descriptor (containerd ``images.Store``).

An image is a GC root: its target and everything that target's
``containerd.io/gc.ref.*`` labels reach stay on disk.
"""
from dataclasses import dataclass, field
from datetime import datetime

from pyrun.content.digest import parse_digest
from pyrun.errdefs import InvalidArgument
from pyrun.filters import labels_field
from pyrun.metadata.records import RecordTable, check_json_object


@dataclass(frozen=True)
class Image:
    """``name`` (a reference such as ``docker.io/library/busybox:latest``),
    ``target`` (OCI descriptor dict: mediaType, digest, size in bytes,
    optional annotations), ``labels`` and times (aware UTC datetimes)."""

    name: str
    target: dict = field(default_factory=dict)
    labels: dict = field(default_factory=dict)
    created_at: datetime = None
    updated_at: datetime = None


def check_descriptor(desc, what):
    """InvalidArgument unless ``desc`` is a valid OCI descriptor dict
    (image-spec descriptor.md: mediaType, digest, size; annotations)."""
    check_json_object(desc, what)
    if not isinstance(desc.get("mediaType"), str) or not desc["mediaType"]:
        raise InvalidArgument(f"{what}: mediaType must be a non-empty string")
    try:
        parse_digest(desc.get("digest"))
    except InvalidArgument as e:
        raise InvalidArgument(f"{what}: {e}") from None
    size = desc.get("size")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise InvalidArgument(f"{what}: size must be a non-negative integer, got {size!r}")
    ann = desc.get("annotations", {})
    if not isinstance(ann, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                            for k, v in ann.items()):
        raise InvalidArgument(f"{what}: annotations must map strings to strings")


class Images(RecordTable):
    """The images of one namespace.  Filter fields: name, target.digest,
    target.mediatype, labels.<key>."""

    table, kind, record = "images", "image", Image
    json_columns = ("target",)
    updatable = ("target",)

    def validate(self, image):
        if not isinstance(image.name, str) or not image.name:
            raise InvalidArgument(f"invalid image name {image.name!r}: must be a non-empty string")
        check_descriptor(image.target, f"image {image.name!r}: target")

    def field(self, image, path):
        if path[0] == "labels":
            return labels_field(image.labels, path)
        if path == ["name"]:
            return image.name
        if path == ["target", "digest"]:
            return image.target.get("digest")
        if path == ["target", "mediatype"]:
            return image.target.get("mediaType")
        return None
