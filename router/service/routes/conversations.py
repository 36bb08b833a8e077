"""Conversations: a caller can make the service forget one of its own."""

import asyncio

from fastapi import APIRouter, Response

from slm_router.router.service.dependencies import Dispatch, Tenant
from slm_router.router.service.errors import documented

endpoints = APIRouter(tags=["routing"])


@endpoints.delete("/v1/conversations/{conversation_id}", status_code=204, responses=documented(401, 404))
async def forget(conversation_id: str, tenant: Tenant, dispatcher: Dispatch) -> Response:
    """Delete the memory of one of the caller's conversations (another tenant's is never reachable)."""
    if not await asyncio.to_thread(dispatcher.router.forget, conversation_id, tenant):
        return dispatcher.failed(404, "not_found", "no such conversation for this API key")
    return Response(status_code=204)
