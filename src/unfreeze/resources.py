"""What this machine has free right now, for refusing work that cannot fit before it starts."""

from __future__ import annotations

import os


def free_memory_bytes() -> int | None:
    """Physical memory available now (None where the OS does not say, e.g. not POSIX)."""
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None
