"""The REST API's clients: ``API_KEYS`` (``name:key,...``) and ``API_TOKEN``.

``API_KEYS`` names the clients, each with its own key; with it set, every job, status and
track belongs to the client that sent it (``rest.owners``). ``API_TOKEN``, the older single
token, stays: alone it guards the API for everyone as before (no ownership); beside
``API_KEYS`` it is one more client, named ``default``. Names become parts of Redis keys, so
they are checked whole (``CLIENT_NAME_RE``).

A pair may end in ``:models=a|b``: that client may use only those models (``common.models``);
to it, every other model is answered as one that does not exist.
"""

from __future__ import annotations

import re

from common.contract import MODEL_RE

CLIENT_NAME_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
API_KEY_RE = re.compile(r"[!-+\--~]{16,256}")
"""16 to 256 printable ASCII characters, without spaces or commas (they separate pairs)."""
MODELS_SUFFIX = ":models="
DEFAULT_CLIENT = "default"
"""The name ``API_TOKEN`` goes by when ``API_KEYS`` is set."""


def parse_api_keys(api_keys: str | None, api_token: str | None = None) -> dict[str, str]:
    """``{name: key}`` of every client; ValueError (naming no key) for a malformed value.

    ``API_TOKEN`` is the client ``default``; it is also the only client when ``API_KEYS`` is
    unset (its holders then share one identity, as before).
    """
    clients: dict[str, str] = {}
    for number, pair in enumerate((api_keys or "").split(","), start=1):
        pair = pair.strip()
        if not pair:
            continue
        name, sep, key = pair.partition(":")
        key = key.rpartition(MODELS_SUFFIX)[0] if MODELS_SUFFIX in key else key
        if not sep or not CLIENT_NAME_RE.fullmatch(name):
            raise ValueError(f"API_KEYS: pair {number} must be name:key, the name 1-64 "
                             "letters, digits, '_' or '-'")
        if not API_KEY_RE.fullmatch(key):
            raise ValueError(f"API_KEYS: the key of {name!r} must be 16-256 printable "
                             "characters without spaces or commas")
        if name in clients:
            raise ValueError(f"API_KEYS: the client {name!r} is named twice")
        clients[name] = key
    if api_token:
        if DEFAULT_CLIENT in clients:
            raise ValueError(f"API_KEYS: {DEFAULT_CLIENT!r} is API_TOKEN's name; name that "
                             "client otherwise")
        clients[DEFAULT_CLIENT] = api_token
    if len(set(clients.values())) != len(clients):
        raise ValueError("API_KEYS: two clients (or a client and API_TOKEN) share a key")
    return clients


def client_models(api_keys: str | None) -> dict[str, frozenset[str]]:
    """``{name: models}`` of the clients of ``API_KEYS`` limited to some models (the others may
    use every model); ValueError for a malformed list."""
    limits: dict[str, frozenset[str]] = {}
    for pair in (api_keys or "").split(","):
        name, _, rest = pair.strip().partition(":")
        if MODELS_SUFFIX not in rest:
            continue
        models = rest.rpartition(MODELS_SUFFIX)[2].split("|")
        if not all(MODEL_RE.fullmatch(model) for model in models):
            raise ValueError(f"API_KEYS: the models of {name!r} must be model names separated "
                             "by '|' (name:key:models=a|b)")
        limits[name] = frozenset(models)
    return limits
