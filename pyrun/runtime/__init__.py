"""pyrun's in-process OCI runtime: create, start, state, kill, delete of
containers from OCI bundles, with the container's child stage in C
(native/container.c).  Each lifecycle verb lives in its own module."""
