"""Which API keys the service accepts, settled before it starts: a service without keys must not be
reachable from another machine."""

import ipaddress
import os

from slm_router.policies.schema import ServerConfig
from slm_router.router.errors import SlmRouterError

LOOPBACK_NAMES = {"localhost"}


class ServerConfigError(SlmRouterError, ValueError):
    """The service cannot start safely with this configuration."""


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def resolve_api_keys(settings: ServerConfig, host: str) -> set[str] | None:
    """The accepted keys, or None when auth is off; off is only allowed on a loopback address."""
    if settings.auth == "disabled":
        if not is_loopback(host):
            raise ServerConfigError(
                f"server.auth is 'disabled' but host {host!r} is not a loopback address; "
                "set API keys in $" + settings.api_keys_env + " or bind to 127.0.0.1"
            )
        return None
    keys = {k.strip() for k in os.environ.get(settings.api_keys_env, "").split(",") if k.strip()}
    if not keys:
        raise ServerConfigError(
            f"no API keys: set ${settings.api_keys_env} (comma-separated), "
            "or server.auth: disabled for a loopback-only service"
        )
    return keys
