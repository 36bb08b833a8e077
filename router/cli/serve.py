"""`serve`: the HTTP service, started only once the policy, the API keys and every model are in place."""

from __future__ import annotations

import logging
from typing import Annotated, Literal

import typer

from slm_router.policies import DEFAULT_POLICY, PolicyError, load_policy
from slm_router.router.cli.options import PolicyOpt
from slm_router.router.cli.output import console, fail, need_extra
from slm_router.router.errors import SlmRouterError

log = logging.getLogger(__name__)


def serve(
    policy: PolicyOpt = None,
    backend: Annotated[
        Literal["local", "ray"] | None, typer.Option(help="Default: the policy's hosting.backend.")
    ] = None,
    host: Annotated[
        str | None, typer.Option(help="Bind address (default: the policy's server.host).")
    ] = None,
    port: Annotated[int | None, typer.Option(help="Port (default: the policy's server.port).")] = None,
) -> None:
    """Serve the HTTP API (OpenAPI docs at /docs). SIGINT/SIGTERM drain in-flight requests, then stop."""
    need_extra("serve", "`slm-router serve`")
    import uvicorn

    from slm_router.router.service.api_keys import ServerConfigError, resolve_admin_keys, resolve_api_keys
    from slm_router.router.service.app import create_app

    try:
        conf = load_policy(policy)
    except PolicyError as exc:
        fail(str(exc))
    if (backend or conf.hosting.backend) == "ray":
        need_extra("ray", "hosting.backend: ray (`--backend ray`)")
    bind_host = host or conf.server.host
    try:
        keys = resolve_api_keys(conf.server, bind_host)
    except ServerConfigError as exc:
        fail(str(exc))
    from slm_router.router.runnable import Router

    with console.status(f"loading models ({backend or conf.hosting.backend} backend)..."):
        try:
            router = Router(conf, backend=backend)
        except Exception as exc:  # start-up / deployment failure: one line, the traceback only at debug
            log.debug("router start-up failed", exc_info=True)
            if isinstance(exc, SlmRouterError):
                reason = str(exc)  # our own errors are written for the user
            else:  # e.g. Ray Serve's deployment failure, whose message can carry whole tracebacks
                first = (str(exc).strip().splitlines() or [""])[0]
                reason = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
            fail(f"could not start the router ({backend or conf.hosting.backend} backend): {reason}")
    # Operator keys (server.admin_keys_env) may label, learn and reload the policy in the console; with
    # auth disabled (loopback only) every caller is an operator.
    admin = resolve_admin_keys(conf.server) if keys is not None else set()
    app_ = create_app(router, conf.server, keys, admin_keys=admin, policy_path=policy or DEFAULT_POLICY)
    console.print(
        f"serving on http://{bind_host}:{port or conf.server.port}  (docs: /docs, metrics: /metrics)"
    )
    uvicorn.run(
        app_,
        host=bind_host,
        port=port or conf.server.port,
        log_level="warning",
        timeout_graceful_shutdown=30,
        access_log=False,
        # Past this many open connections uvicorn answers 503 itself: a backstop behind admission control.
        limit_concurrency=conf.server.max_connections,
        timeout_keep_alive=5,
    )
