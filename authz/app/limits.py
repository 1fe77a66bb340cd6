"""Process limits taken at start-up: the open-files headroom the hard limit allows."""

from __future__ import annotations

import contextlib
import resource

__all__ = ["raise_open_files_limit"]


def raise_open_files_limit() -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE to the hard limit; returns (soft, hard) as they are now.

    Both doors and the admin port share the process's descriptors, and container runtimes
    often start processes at a soft limit of 1024 under a far higher hard one: the headroom
    is the process's to take. An unlimited hard limit is capped at 1 Mi (what the kernel's
    nr_open usually allows). The result is in the ``serving`` (``supervising``) line.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft != resource.RLIM_INFINITY and soft < target:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)
