"""Hugging Face Hub access: a fast reachability probe, so an offline machine gets one clear
paragraph in seconds instead of a minute of retries and a 60-line traceback."""

from __future__ import annotations

import os
import socket
from functools import cache
from urllib.parse import urlparse

from qaexp.errors import QAExpError

OFFLINE_OPTIONS = (
    "To work offline, use the embedded model (model=minilm) or a local checkpoint "
    "(model.name_or_path=PATH), and local data (data=squad_json data.train_file=PATH "
    "data.validation_file=PATH, or data=synthetic)."
)


def hub_endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co")


def hub_offline_requested() -> bool:
    return any(
        os.environ.get(var, "").upper() in {"1", "ON", "YES", "TRUE"}
        for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE")
    )


@cache
def hub_reachable(timeout: float = 3.0) -> bool:
    """True when a TCP connection to the Hub endpoint opens within `timeout` seconds."""
    url = urlparse(hub_endpoint())
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname, port), timeout=timeout):
            return True
    except OSError:
        return False


def ensure_hub_reachable(what: str) -> None:
    """Raise a clear QAExpError when `what` would need the Hub and the Hub cannot be reached.

    With HF_HUB_OFFLINE=1 the libraries read their local cache instead, so no probe is made.
    """
    if hub_offline_requested() or hub_reachable():
        return
    raise QAExpError(
        f"{what} comes from the Hugging Face Hub, and the Hub ({hub_endpoint()}) cannot be "
        "reached from this machine. If it is already in your local Hugging Face cache, set "
        "HF_HUB_OFFLINE=1 to use that copy. " + OFFLINE_OPTIONS
    )
