"""Who may call the server: API keys for /v1/*, an admin key for adapter administration.

Keys come from flags (repeatable) and environment variables (comma-separated), so a key need not
appear in `ps`. Clients send `Authorization: Bearer KEY`, as OpenAI's clients do with `api_key`.
Without any key the server is open, which `check_exposure` allows only on a loopback address
unless the operator says --allow-no-auth.
"""

from __future__ import annotations

import hmac
import ipaddress
import os
from dataclasses import dataclass, field
from typing import Iterable, Optional, Sequence, Tuple

from ..errors import UserError

API_KEY_ENV = "MLX_WHISPER_LORA_API_KEY"
ADMIN_KEY_ENV = "MLX_WHISPER_LORA_ADMIN_KEY"


def keys_from(flags: Optional[Sequence[str]], env_var: str, environ=None) -> Tuple[str, ...]:
    """The keys given by repeated flags and by `env_var` (comma-separated), empty ones dropped."""
    environ = os.environ if environ is None else environ
    keys = [k.strip() for k in flags or []] + [k.strip() for k in environ.get(env_var, "").split(",")]
    return tuple(dict.fromkeys(k for k in keys if k))


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_exposure(host: str, api_keys: Sequence[str], allow_no_auth: bool) -> None:
    """Refuse to listen beyond this machine with no key, unless told to."""
    if not api_keys and not allow_no_auth and not is_loopback(host):
        raise UserError(f"--host {host} listens beyond this machine with no API key: pass --api-key KEY "
                        f"(or set {API_KEY_ENV}), or --allow-no-auth to serve everyone")


def bearer(authorization: Optional[str]) -> Optional[str]:
    """The token of an `Authorization: Bearer TOKEN` header, else None."""
    scheme, _, token = (authorization or "").partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


def matches(token: Optional[str], keys: Iterable[str]) -> bool:
    """Constant-time comparison against every key (no early exit that times out which key is close)."""
    found = False
    for key in keys:
        found |= token is not None and hmac.compare_digest(token.encode(), key.encode())
    return found


@dataclass(frozen=True)
class Keys:
    """The server's keys: `api` for /v1/* (none: open), `admin` for /v1/adapters (none: disabled)."""

    api: Tuple[str, ...] = ()
    admin: Tuple[str, ...] = field(default=())

    def allows(self, authorization: Optional[str]) -> bool:
        """May this request use the API? The admin key is also an API key."""
        return not self.api or matches(bearer(authorization), self.api + self.admin)

    def admin_allows(self, authorization: Optional[str]) -> bool:
        return bool(self.admin) and matches(bearer(authorization), self.admin)
