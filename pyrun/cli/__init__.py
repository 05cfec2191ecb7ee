"""Command lines: ``pyrun`` (runc-compatible, :mod:`pyrun.cli.runc`)."""
