"""Reaching the Hugging Face hub, decided fast and once per process: when its host does not
resolve, the process goes offline at once (huggingface_hub, transformers and datasets then
read only their local caches) instead of retrying for most of a minute."""

from __future__ import annotations

import contextlib
import os

OFFLINE_HINT = (
    "set HF_HUB_OFFLINE=1 to use only the local hub cache without this check, or pass a local "
    "folder"
)
RESOLVE_TIMEOUT_S = 3.0
_DECIDED = "GAIN_CURATE_HUB"  # set when this process found the hub unreachable


def resolves(url: str, timeout: float = RESOLVE_TIMEOUT_S) -> bool:
    """Whether the URL's host resolves within `timeout` seconds (DNS only, no request)."""
    import socket
    import threading
    from urllib.parse import urlparse

    host, found = urlparse(url).hostname, []
    if not host:
        return False

    def lookup() -> None:
        with contextlib.suppress(OSError):
            found.append(socket.getaddrinfo(host, 443))

    worker = threading.Thread(target=lookup, daemon=True)
    worker.start()
    worker.join(timeout)
    return bool(found)


def offline_reason() -> str | None:
    """Why the hub is off for this process, or None when it is on: HF_HUB_OFFLINE was set,
    or its host did not resolve (checked once: the process and the processes it starts then
    stay offline)."""
    from huggingface_hub import constants

    if os.environ.get(_DECIDED) == "unreachable":
        return f"the hub cannot be reached ({host()} does not resolve)"
    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set"
    if resolves(constants.ENDPOINT):
        return None
    constants.HF_HUB_OFFLINE = True
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ[_DECIDED] = "unreachable"
    return offline_reason()


def host() -> str:
    from urllib.parse import urlparse

    from huggingface_hub import constants

    return urlparse(constants.ENDPOINT).hostname or constants.ENDPOINT


def cached(repo_id: str, revision: str | None) -> bool:
    """Whether the local hub cache holds the model's config.json (at `revision`)."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo_id, "config.json", revision=revision)
    return isinstance(found, str)
