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
    """The accepted keys (operator keys included), or None when auth is off; off is only allowed on a
    loopback address."""
    if settings.auth == "disabled":
        if not is_loopback(host):
            raise ServerConfigError(
                f"server.auth is 'disabled' but host {host!r} is not a loopback address; "
                "set API keys in $" + settings.api_keys_env + " or bind to 127.0.0.1"
            )
        return None
    keys = _keys_in(settings.api_keys_env) | resolve_admin_keys(settings)
    if not keys:
        raise ServerConfigError(
            f"no API keys: set ${settings.api_keys_env} (comma-separated), "
            "or server.auth: disabled for a loopback-only service"
        )
    return keys


def resolve_admin_keys(settings: ServerConfig) -> set[str]:
    """The operator keys ($server.admin_keys_env): every other accepted key only reads the console."""
    return _keys_in(settings.admin_keys_env)


def _keys_in(env: str) -> set[str]:
    return {k.strip() for k in os.environ.get(env, "").split(",") if k.strip()}
