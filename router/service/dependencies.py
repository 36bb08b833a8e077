"""What an endpoint declares as a parameter: the caller's tenant (the Gate settles it before the body is
read) and the app's `Dispatcher`. Both are async so that FastAPI does not send them to a worker thread."""

from typing import Annotated

from fastapi import Depends, Request

from slm_router.router.service.dispatch import Dispatcher


async def _tenant(request: Request) -> str:
    return str(request.state.tenant)


async def _dispatcher(request: Request) -> Dispatcher:
    dispatcher: Dispatcher = request.app.state.dispatcher
    return dispatcher


Tenant = Annotated[str, Depends(_tenant)]
Dispatch = Annotated[Dispatcher, Depends(_dispatcher)]
