"""Run several calls at the same moment, each in its own thread (cells trained side by side)."""

from __future__ import annotations

import threading


def at_once(fn, args: list) -> list:
    """``[fn(*a) for a in args]``, every call in its own thread, all released together by a
    barrier; the first exception of any call is raised here."""
    out: list = [None] * len(args)
    errors: list = []
    start = threading.Barrier(len(args))

    def work(i, a):
        try:
            start.wait()
            out[i] = fn(*a)
        except Exception as e:  # noqa: BLE001 - re-raised below, in the caller's thread
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i, a)) for i, a in enumerate(args)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return out
