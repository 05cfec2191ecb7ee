"""pyrun: a container runtime and image/container manager for Linux."""

__version__ = "0.1.0"
