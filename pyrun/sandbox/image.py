"""Root filesystems from images in pyrun's image store: each sandbox gets
a read-only *view* snapshot of the image's top layer (containerd's
``Snapshotter.View``), mounted in its scratch directory for as long as it
lives, then unmounted and removed.

The image is unpacked into the snapshotter on first use (later uses find
the committed layers).  Store calls are serialized by one lock: the
metadata DB is one SQLite connection.
"""
import threading

from pyrun.errdefs import InvalidArgument, NotFound

_lock = threading.Lock()


class ImageSource:
    """``image`` (a name as stored, or a reference such as ``busybox``) in
    tenant ``namespace`` of ``db`` (a :class:`pyrun.metadata.DB`), to be
    unpacked with ``snapshotter``."""
    __slots__ = ("image", "db", "namespace", "snapshotter")

    def __init__(self, image, db, namespace="default", snapshotter="overlayfs"):
        if not isinstance(image, str) or not image:
            raise InvalidArgument(f"image: expected an image name, got {image!r}")
        if db is None:
            raise InvalidArgument("image= needs db= (a pyrun.metadata.DB holding the image)")
        self.image, self.db, self.namespace, self.snapshotter = image, db, namespace, snapshotter

    def _name(self, images):
        from pyrun.registry.reference import parse_reference
        try:
            return images.get(self.image).name
        except NotFound:
            pass
        try:
            return images.get(str(parse_reference(self.image))).name
        except (NotFound, InvalidArgument):
            raise NotFound(f"image {self.image!r}: not found in namespace {self.namespace!r} "
                           "(pull or import it first)") from None

    def mount(self, key, target):
        """Make view snapshot ``key`` of the image and mount it at
        ``target`` (an empty directory).  Undone by :meth:`unmount`; on
        failure nothing is left."""
        from pyrun.images.store import ImageStore
        from pyrun.mount import mount_all

        with _lock:
            images = ImageStore(self.db, self.namespace)
            chain = images.unpack(self._name(images), self.snapshotter)
            sn = self.db.snapshotter(self.namespace, self.snapshotter)
            mounts = sn.view(key, chain)
        try:
            mount_all(mounts, target)
        except BaseException:
            with _lock:
                sn.remove(key)
            raise

    def unmount(self, key, target):
        """Undo :meth:`mount`, or what it did of it."""
        from pyrun.mount import unmount_all

        unmount_all(target)
        with _lock:
            try:
                self.db.snapshotter(self.namespace, self.snapshotter).remove(key)
            except NotFound:
                pass  # mount() was interrupted, or undid itself
