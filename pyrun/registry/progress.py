"""Download progress: one line per blob plus a total, on a terminal only.

The fetch code calls ``add(digest, size)``, ``update(digest, offset)`` (bytes
held so far) and ``done(digest, state)`` from its worker threads and ``close()`` at the end; any
object with those methods can stand in (tests use one to act mid-download).
"""
import sys
import threading
import time

REDRAW_INTERVAL = 0.1  # seconds between redraws


def _size(n):
    if n < 1024:
        return f"{n} B"
    for unit in ("KiB", "MiB", "GiB"):
        n /= 1024
        if n < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}"


class Progress:
    """Progress lines on ``stream`` (default stdout), drawn only when it is a
    terminal; otherwise every call is a no-op."""

    def __init__(self, stream=None):
        self.stream = stream or sys.stdout
        self.enabled = self.stream.isatty()
        self._lock = threading.Lock()
        self._rows = {}  # digest -> [done, size, state]
        self._drawn = 0
        self._last = 0.0

    def add(self, digest, size):
        with self._lock:
            self._rows.setdefault(digest, [0, size, "waiting"])
        self._draw()

    def update(self, digest, offset):
        with self._lock:
            row = self._rows.setdefault(digest, [0, 0, ""])
            row[0], row[2] = offset, "downloading"
        self._draw()

    def done(self, digest, state="done"):
        with self._lock:
            row = self._rows.setdefault(digest, [0, 0, ""])
            row[0], row[2] = row[1], state
        self._draw(force=True)

    def close(self):
        self._draw(force=True)

    def _draw(self, force=False):
        if not self.enabled:
            return
        with self._lock:
            now = time.monotonic()
            if not force and now - self._last < REDRAW_INTERVAL:
                return
            self._last = now
            lines = [f"{d[:19]}  {st:<11} {_size(n):>10} / {_size(size)}"
                     for d, (n, size, st) in self._rows.items()]
            total = sum(r[0] for r in self._rows.values())
            whole = sum(r[1] for r in self._rows.values())
            lines.append(f"{'total':<19}  {'':<11} {_size(total):>10} / {_size(whole)}")
            up = f"\x1b[{self._drawn}F" if self._drawn else ""
            self.stream.write(up + "".join(f"\x1b[2K{line}\n" for line in lines))
            self.stream.flush()
            self._drawn = len(lines)

