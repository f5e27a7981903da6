"""Registry routes (api.md §7): conversations and devices. Scope ``admin``, or ``exhaust`` for
the caller's own channels. A device's phone can be written here but is never read back."""

from __future__ import annotations

from collections.abc import Collection
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from data_exhaust.api.datasets import parse_limit
from data_exhaust.api.deps import ServicesDep, require_scope
from data_exhaust.api.envelope import envelope
from data_exhaust.api.errors import ApiError, client_error
from data_exhaust.api.schemas import Params, body
from data_exhaust.api.submission import parse_body
from data_exhaust.keys import Caller
from data_exhaust.registry import (
    ConversationInfo,
    DeviceInfo,
    RegistryError,
    check_id,
    normalise_phone,
    parse_day,
)

router = APIRouter(tags=["registry"])
RegistryCaller = Annotated[Caller, Depends(require_scope("exhaust"))]


class ConversationRequest(BaseModel):
    name: str = Field(description="Display name (Conversation Name in the exhausts)")
    channel: str = Field(description="The owning channel; one of the key's channels")
    startDate: str | None = Field(None, description="YYYY-MM-DD")
    endDate: str | None = Field(None, description="YYYY-MM-DD")


class ConversationBody(BaseModel):
    params: Params | None = None
    request: ConversationRequest


class DeviceRequest(BaseModel):
    conversations: list[str] = Field(description="Registered conversation ids")
    phone: str | None = Field(None, description="Stored encrypted; never returned")
    consent: bool = Field(True, description="False: responses are blanked, phone not exported")


class DeviceBody(BaseModel):
    params: Params | None = None
    request: DeviceRequest


def scope_of(caller: Caller) -> Collection[str] | None:
    """The channels a caller may act in; None for an admin (every channel)."""
    return None if caller.is_admin else caller.channels


def conversation_json(info: ConversationInfo) -> dict[str, Any]:
    return {
        "conversationId": info.conversation_id,
        "name": info.name,
        "channel": info.channel,
        "startDate": info.start_date.isoformat() if info.start_date else None,
        "endDate": info.end_date.isoformat() if info.end_date else None,
    }


def device_json(info: DeviceInfo) -> dict[str, Any]:
    return {
        "deviceUuid": info.device_uuid,
        "conversations": info.conversations,
        "consent": info.consent,
        "hasPhone": info.has_phone,
    }


def parse_conversation(
    conversation_id: str, payload: dict[str, Any], caller: Caller
) -> ConversationInfo:
    name, channel = payload.get("name"), payload.get("channel")
    if not isinstance(name, str) or not name.strip() or len(name) > 300:
        raise client_error("name is required: 1 to 300 characters")
    if not isinstance(channel, str) or not channel.strip():
        raise client_error("channel is required: the channel that owns the conversation")
    if not caller.may_use(channel):
        raise ApiError("FORBIDDEN", f"channel '{channel}' is not allowed for this API key")
    try:
        check_id(conversation_id, "conversationId")
        start = parse_day(payload.get("startDate"), "startDate")
        end = parse_day(payload.get("endDate"), "endDate")
    except ValueError as exc:
        raise client_error(str(exc)) from None
    if start and end and end < start:
        raise client_error("endDate must not be before startDate")
    return ConversationInfo(conversation_id, name.strip(), channel, start, end)


@router.put(
    "/v1/conversations/{conversation_id}",
    name="api.conversation.put",
    openapi_extra=body(ConversationBody),
)
async def put_conversation(
    request: Request, conversation_id: str, services: ServicesDep, caller: RegistryCaller
) -> Response:
    """Register or update a conversation (bot) of one of the caller's channels."""
    payload, msgid = parse_body(await request.body())
    request.state.msgid = msgid
    info = parse_conversation(conversation_id, payload, caller)
    try:
        created = await run_in_threadpool(
            services.registry.put_conversation, info, scope_of(caller)
        )
    except RegistryError as exc:
        raise ApiError(exc.code, exc.message) from None
    return envelope(request, {**conversation_json(info), "created": created})


@router.get("/v1/conversations/{conversation_id}", name="api.conversation.read")
def get_conversation(
    request: Request, conversation_id: str, services: ServicesDep, caller: RegistryCaller
) -> Response:
    """One conversation of the caller's channels."""
    found = services.registry.get_conversation(conversation_id, scope_of(caller))
    if found is None:
        raise ApiError("RESOURCE_NOT_FOUND", "no conversation with this id in your channels")
    return envelope(request, conversation_json(found))


@router.get("/v1/conversations", name="api.conversation.list")
def list_conversations(
    request: Request,
    services: ServicesDep,
    caller: RegistryCaller,
    limit: Annotated[str | None, Query()] = None,
    offset: Annotated[int, Query(ge=0, le=10**9)] = 0,
) -> Response:
    """The conversations of the caller's channels, by id (``count`` is the total)."""
    total, found = services.registry.list_conversations(
        scope_of(caller), parse_limit(limit), offset
    )
    return envelope(
        request, {"count": total, "conversations": [conversation_json(c) for c in found]}
    )


def parse_device(payload: dict[str, Any]) -> tuple[list[str], str | None, bool]:
    conversations = payload.get("conversations")
    if not isinstance(conversations, list) or not all(isinstance(c, str) for c in conversations):
        raise client_error("conversations must be a list of conversation ids")
    consent = payload.get("consent", True)
    if not isinstance(consent, bool):
        raise client_error("consent must be true or false")
    phone = payload.get("phone")
    if phone in (None, ""):
        return conversations, None, consent
    if not isinstance(phone, str):
        raise client_error("phone must be a string of digits")
    try:
        return conversations, normalise_phone(phone), consent
    except ValueError as exc:
        raise client_error(str(exc)) from None


@router.put("/v1/devices/{device_uuid}", name="api.device.put", openapi_extra=body(DeviceBody))
async def put_device(
    request: Request, device_uuid: str, services: ServicesDep, caller: RegistryCaller
) -> Response:
    """Register a device: its conversations, phone (encrypted at rest) and consent."""
    payload, msgid = parse_body(await request.body())
    request.state.msgid = msgid
    conversations, phone, consent = parse_device(payload)
    try:
        check_id(device_uuid, "deviceUuid")
        info = await run_in_threadpool(
            services.registry.put_device,
            device_uuid,
            conversations,
            phone,
            consent,
            scope_of(caller),
        )
    except ValueError as exc:
        raise client_error(str(exc)) from None
    except RegistryError as exc:
        raise ApiError(exc.code, exc.message) from None
    return envelope(request, device_json(info))


@router.get("/v1/devices/{device_uuid}", name="api.device.read")
def get_device(
    request: Request, device_uuid: str, services: ServicesDep, caller: RegistryCaller
) -> Response:
    """A device linked to the caller's conversations (never its phone)."""
    found = services.registry.get_device(device_uuid, scope_of(caller))
    if found is None:
        raise ApiError("RESOURCE_NOT_FOUND", "no device with this id in your conversations")
    return envelope(request, device_json(found))
