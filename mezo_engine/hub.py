"""Whether the HuggingFace hub can be reached, decided once per process.

transformers and datasets retry a hub that does not answer for about half a minute per file before they give up
(52 s for a model, 29 s for a data set, measured on a machine without network). A run asks ``offline_reason``
first: an offline switch in the environment, or one TCP connection to the hub's endpoint that fails within
``CONNECT_TIMEOUT``, means the hub is not used at all; the libraries then read their local caches only, so a cached
model or data set still loads and anything else fails in seconds with a message naming the reason.
"""
from __future__ import annotations

import functools
import os
import socket
import urllib.request
from urllib.parse import urlsplit

CONNECT_TIMEOUT = 3.0  # seconds; the hub answers a connection in well under one where it is reachable
OFFLINE_SWITCHES = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE")


def endpoint() -> str:
    """The hub URL the libraries use (``HF_ENDPOINT``, read by huggingface_hub when it is imported)."""
    from huggingface_hub import constants

    return constants.ENDPOINT


def offline_reason() -> str | None:
    """Why the hub is not to be used (an offline switch set, or its endpoint not answering), or None."""
    for name in OFFLINE_SWITCHES:
        if os.environ.get(name, "").upper() in ("1", "ON", "YES", "TRUE"):
            return f"{name} is set"
    return probe(endpoint())


@functools.cache
def probe(url: str) -> str | None:
    """None when ``url``'s host (or the proxy the environment names for it) accepts a TCP connection within
    ``CONNECT_TIMEOUT``; else what went wrong. Asked once per URL and process."""
    target = first_hop(url)
    port = target.port or (443 if target.scheme == "https" else 80)
    try:
        with socket.create_connection((target.hostname, port), timeout=CONNECT_TIMEOUT):
            return None
    except OSError as err:
        via = "" if target.hostname == urlsplit(url).hostname else f" (through the proxy {target.geturl()})"
        return f"{url}{via} does not answer: {err.strerror or err}"


def first_hop(url: str):
    """Where a request for ``url`` first connects: the proxy ``HTTPS_PROXY`` / ``HTTP_PROXY`` names for its scheme
    (unless ``NO_PROXY`` exempts the host), else the host itself (``urlsplit`` parts)."""
    parts = urlsplit(url)
    proxy = urllib.request.getproxies().get(parts.scheme)
    if proxy and not urllib.request.proxy_bypass(parts.hostname or ""):
        return urlsplit(proxy if "://" in proxy else f"http://{proxy}")
    return parts
