"""Whether the Hugging Face hub answers, asked once up front: on an offline machine its clients retry for half
a minute or more before they give up, and a user waits through that noise for a one-line error."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator


def hub_reachable(timeout: float = 3.0) -> bool:
    """False when offline mode is on or the hub's host does not answer within ``timeout`` seconds."""
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    url = urlparse(constants.ENDPOINT)
    port = url.port or (443 if url.scheme == "https" else 80)
    found: list = []

    def lookup() -> None:
        with contextlib.suppress(OSError):
            found.extend(socket.getaddrinfo(url.hostname, port, type=socket.SOCK_STREAM))

    # The name lookup has no timeout of its own (a machine without DNS waits 40 s in it): run it in a daemon
    # thread and stop waiting after ``timeout``; the thread, if still stuck, does not hold up the exit.
    resolver = threading.Thread(target=lookup, daemon=True)
    resolver.start()
    resolver.join(timeout)
    for family, kind, proto, _, address in list(found):
        try:
            with socket.socket(family, kind, proto) as sock:
                sock.settimeout(timeout)
                sock.connect(address)
            return True
        except OSError:
            continue
    return False


@contextlib.contextmanager
def offline_unless_reachable() -> Iterator[bool]:
    """Run the body in the hub clients' offline mode (their local caches only, no retries) when the hub does not
    answer; yields whether it does. A dataset already in the cache still loads."""
    reachable = hub_reachable()
    if reachable:
        yield True
        return
    from huggingface_hub import constants

    targets = [constants]
    with contextlib.suppress(ImportError):
        import datasets

        if hasattr(getattr(datasets, "config", None), "HF_HUB_OFFLINE"):
            targets.append(datasets.config)
    saved = [t.HF_HUB_OFFLINE for t in targets]
    for t in targets:
        t.HF_HUB_OFFLINE = True
    try:
        yield False
    finally:
        for t, value in zip(targets, saved, strict=True):
            t.HF_HUB_OFFLINE = value
