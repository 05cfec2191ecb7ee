"""The closed set of public error kinds, shared by every pyrun component.

Modelled on containerd's ``errdefs``: callers test the kind, not the message.
Each component translates third-party exceptions into these at its edge and
adds context (the object's name, the path, the operation) on the way up.
"""


class PyrunError(Exception):
    """Base of every error pyrun raises on purpose."""


class NotFound(PyrunError):
    """The named object (container, image, blob, snapshot, …) does not exist."""


class AlreadyExists(PyrunError):
    """An object with that name or key already exists."""


class FailedPrecondition(PyrunError):
    """The object is in the wrong state for the operation (e.g. start on a
    stopped container, delete of a running one, remove of a snapshot with
    children)."""


class InvalidArgument(PyrunError):
    """Bad input: a malformed config, reference, digest or flag value."""


class Unavailable(PyrunError):
    """A resource is busy or unreachable (a locked ref, a registry that is
    down); retrying later may succeed."""


class NotImplementedYet(InvalidArgument):
    """A valid request that pyrun cannot honour (yet).  Raised instead of
    silently skipping a field."""
