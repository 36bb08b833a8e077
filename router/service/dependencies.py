"""What an endpoint declares as a parameter: the caller's tenant, role and key id (the Gate settles them
before the body is read), the app's `Dispatcher` and `Console`, and `require_operator` for endpoints that
change something. All are async so that FastAPI does not send them to a worker thread."""

from typing import Annotated

from fastapi import Depends, Request

from slm_router.router.service.console_api import Console
from slm_router.router.service.dispatch import Dispatcher


async def _tenant(request: Request) -> str:
    return str(request.state.tenant)


async def _role(request: Request) -> str:
    return str(request.state.role)


async def _key_id(request: Request) -> str:
    return str(request.state.key_id)


async def _dispatcher(request: Request) -> Dispatcher:
    dispatcher: Dispatcher = request.app.state.dispatcher
    return dispatcher


async def _console(request: Request) -> Console:
    console: Console = request.app.state.console
    return console


async def _operator(request: Request) -> None:
    """403 `forbidden` unless the key is an operator key (server.admin_keys_env), or auth is off."""
    Console.require_operator(request.state.role)


Tenant = Annotated[str, Depends(_tenant)]
Role = Annotated[str, Depends(_role)]
KeyId = Annotated[str, Depends(_key_id)]
Dispatch = Annotated[Dispatcher, Depends(_dispatcher)]
ConsoleDep = Annotated[Console, Depends(_console)]
require_operator = Depends(_operator)
