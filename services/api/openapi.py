"""OpenAPI for the one body Litestar does not decode itself.

``create_user`` reads its raw body so that it can report every bad field at once (msgspec stops at the
first). Litestar therefore cannot see the request type, so this module documents it from the same Struct.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import msgspec
from litestar.openapi.spec import OpenAPIMediaType, Operation, RequestBody, Schema

_SCHEMA_FIELDS = {field.name for field in dataclasses.fields(Schema)}


def _snake(key: str) -> str:
    return re.sub(r"(?<!^)([A-Z])", r"_\1", key).lower()


def _to_schema(json_schema: dict[str, Any]) -> Schema:
    values: dict[str, Any] = {}
    for key, value in json_schema.items():
        name = _snake(key)
        if name == "properties":
            value = {prop: _to_schema(sub) for prop, sub in value.items()}
        if name in _SCHEMA_FIELDS:
            values[name] = value
    return Schema(**values)


def body_operation(struct: type[msgspec.Struct], media_type: str = "application/json") -> type[Operation]:
    """An ``Operation`` class whose request body, of ``media_type``, has ``struct``'s JSON schema."""
    definition = msgspec.json.schema(struct)["$defs"][struct.__name__]
    body = RequestBody(required=True, content={media_type: OpenAPIMediaType(schema=_to_schema(definition))})

    @dataclasses.dataclass
    class WithBody(Operation):
        def __post_init__(self) -> None:
            self.request_body = body

    return WithBody
