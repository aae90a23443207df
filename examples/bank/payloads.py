"""Reading JSON request bodies into typed values; a bad body becomes a 422 that says which field is wrong."""

from __future__ import annotations

import json
from collections.abc import Mapping

from aiohttp import web

JsonObject = dict[str, object]


class InvalidPayload(ValueError):
    """The request body is not what the endpoint accepts; the replica middleware answers 422 with the message."""


async def read_object(request: web.Request) -> JsonObject:
    """The body as a JSON object, or InvalidPayload."""
    raw = await request.read()
    try:
        value: object = json.loads(raw) if raw else None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidPayload(f"body is not JSON: {exc}") from exc
    return as_object(value, "body")


def as_object(value: object, what: str) -> JsonObject:
    if not isinstance(value, dict) or not all(isinstance(key, str) for key in value):
        raise InvalidPayload(f"{what} must be a JSON object")
    return {str(key): item for key, item in value.items()}


def field_str(body: Mapping[str, object], key: str, *, default: str | None = None) -> str:
    value = body.get(key, default)
    if not isinstance(value, str) or not value:
        raise InvalidPayload(f"{key} must be a non-empty string")
    return value


def field_int(body: Mapping[str, object], key: str, *, minimum: int | None = None) -> int:
    """An integer field; booleans are refused even though Python treats them as ints."""
    value = body.get(key)
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidPayload(f"{key} must be an integer")
    if minimum is not None and value < minimum:
        raise InvalidPayload(f"{key} must be at least {minimum}, got {value}")
    return value


def field_float(body: Mapping[str, object], key: str, *, default: float) -> float:
    value = body.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidPayload(f"{key} must be a number")
    return float(value)


def field_list(body: Mapping[str, object], key: str) -> list[object]:
    value = body.get(key)
    if not isinstance(value, list):
        raise InvalidPayload(f"{key} must be a list")
    return list(value)
