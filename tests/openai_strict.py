"""OpenAI's documented rules for a strict `json_schema` response format, as a checker.

The rules, from OpenAI's Structured Outputs guide ("Supported schemas") and the SDK's own
strict-schema validator:
- `json_schema.name` matches `^[a-zA-Z0-9_-]{1,64}$`; `strict` is true.
- The root is an object, not `anyOf`.
- Every node has `type`, `anyOf` or `$ref`; types are string, number, integer, boolean,
  object, array, null (or a list of them, for a nullable field).
- Every object sets `additionalProperties: false` and lists every property in `required`.
- Only supported keywords: for strings `pattern` and `format`; for numbers `multipleOf`,
  `minimum`, `maximum`, `exclusiveMinimum`, `exclusiveMaximum`; for arrays `items`,
  `minItems`, `maxItems`; annotations (`title`, `description`); `enum`, `const`, `$defs`.
  `allOf`, `not`, `if`/`then`/`else`, `dependentRequired`, `dependentSchemas`,
  `minLength`/`maxLength` and the others are refused.
- Fine-tuned models also refuse `pattern`, `format`, `minimum`, `maximum`, `multipleOf`,
  `minItems` and `maxItems` (and the exclusive bounds).
- Limits: at most 5,000 object properties in all; at most 10 levels of object nesting; at
  most 120,000 characters in all property names, definition names, enum and const
  values; at most 1,000 enum values in all; an enum of over 250 strings at most 15,000
  characters.
"""

from __future__ import annotations

import re
from typing import Any

NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
TYPES = {"string", "number", "integer", "boolean", "object", "array", "null"}
ANNOTATIONS = {"title", "description", "enum", "const", "$defs", "type", "anyOf", "$ref"}
BY_TYPE = {
    "string": {"pattern", "format"},
    "number": {"multipleOf", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"},
    "integer": {"multipleOf", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"},
    "array": {"items", "minItems", "maxItems"},
    "object": {"properties", "required", "additionalProperties"},
    "boolean": set(),
    "null": set(),
}
FINE_TUNED_REFUSED = {
    "pattern",
    "format",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "multipleOf",
    "minItems",
    "maxItems",
}
MAX_PROPERTIES = 5_000
MAX_OBJECT_DEPTH = 10
MAX_TOTAL_STRING_CHARS = 120_000
MAX_ENUM_VALUES = 1_000
LARGE_ENUM = 250
LARGE_ENUM_CHARS = 15_000


def violations(response_format: Any, *, fine_tuned: bool = False) -> list[str]:
    """Every rule `response_format` breaks, each as "context: what", empty when OpenAI
    would accept it."""
    found: list[str] = []
    if not isinstance(response_format, dict) or response_format.get("type") != "json_schema":
        return ["response_format: type must be 'json_schema'"]
    spec = response_format.get("json_schema") or {}
    if not NAME.match(str(spec.get("name", ""))):
        found.append("json_schema.name: must match ^[a-zA-Z0-9_-]{1,64}$")
    if spec.get("strict") is not True:
        found.append("json_schema.strict: must be true")
    schema = spec.get("schema")
    if not isinstance(schema, dict) or schema.get("type") != "object" or "anyOf" in schema:
        return [*found, "schema: the root must be an object, not anyOf"]
    totals = {"properties": 0, "chars": 0, "enum_values": 0}
    _check(schema, (), 1, fine_tuned, totals, found)
    if totals["properties"] > MAX_PROPERTIES:
        found.append(f"schema: {totals['properties']} object properties, at most {MAX_PROPERTIES}")
    if totals["chars"] > MAX_TOTAL_STRING_CHARS:
        found.append(f"schema: {totals['chars']} characters of names and values, at most {MAX_TOTAL_STRING_CHARS}")
    if totals["enum_values"] > MAX_ENUM_VALUES:
        found.append(f"schema: {totals['enum_values']} enum values, at most {MAX_ENUM_VALUES}")
    return found


def _check(
    node: Any, context: tuple[str, ...], depth: int, fine_tuned: bool, totals: dict[str, int], found: list[str]
) -> None:
    where = f"context={context}"
    if not isinstance(node, dict):
        found.append(f"{where}: a schema must be an object")
        return
    kinds = [k for k in ("type", "anyOf", "$ref") if k in node]
    if not kinds:
        found.append(f"{where}: schema must have a 'type' key")
        return
    types = node.get("type", [])
    types = [types] if isinstance(types, str) else list(types)
    if any(t not in TYPES for t in types):
        found.append(f"{where}: unsupported type {node['type']!r}")
    allowed = set(ANNOTATIONS).union(*(BY_TYPE.get(t, set()) for t in types))
    if fine_tuned:
        allowed -= FINE_TUNED_REFUSED
    for keyword in node:
        if keyword not in allowed:
            found.append(f"{where}: '{keyword}' is not permitted")
    _check_values(node, where, totals, found)
    if "object" in types:
        if depth > MAX_OBJECT_DEPTH:
            found.append(f"{where}: objects nested {depth} deep, at most {MAX_OBJECT_DEPTH}")
        properties = node.get("properties", {})
        if node.get("additionalProperties") is not False:
            found.append(f"{where}: 'additionalProperties' is required to be supplied and to be false")
        missing = sorted(set(properties) - set(node.get("required", [])))
        if missing:
            found.append(f"{where}: 'required' is required to include every property; missing {missing}")
        totals["properties"] += len(properties)
        totals["chars"] += sum(len(name) for name in properties)
        for name, child in properties.items():
            _check(child, (*context, "properties", name), depth + 1, fine_tuned, totals, found)
    if "array" in types and "items" in node:
        _check(node["items"], (*context, "items"), depth, fine_tuned, totals, found)
    for i, option in enumerate(node.get("anyOf", [])):
        _check(option, (*context, "anyOf", str(i)), depth, fine_tuned, totals, found)
    for name, definition in node.get("$defs", {}).items():
        totals["chars"] += len(name)
        _check(definition, (*context, "$defs", name), depth, fine_tuned, totals, found)


def _check_values(node: dict[str, Any], where: str, totals: dict[str, int], found: list[str]) -> None:
    enum = node.get("enum", [])
    totals["enum_values"] += len(enum)
    enum_chars = sum(len(v) for v in enum if isinstance(v, str))
    totals["chars"] += enum_chars
    if len(enum) > LARGE_ENUM and enum_chars > LARGE_ENUM_CHARS:
        found.append(f"{where}: an enum of {len(enum)} values has {enum_chars} characters, at most {LARGE_ENUM_CHARS}")
    if isinstance(node.get("const"), str):
        totals["chars"] += len(node["const"])


def error_body(response_format: Any, found: list[str]) -> dict[str, Any]:
    """The 400 body OpenAI answers an invalid schema with."""
    name = (response_format.get("json_schema") or {}).get("name") if isinstance(response_format, dict) else None
    return {
        "error": {
            "message": f"Invalid schema for response_format '{name}': In {found[0]}.",
            "type": "invalid_request_error",
            "param": "response_format",
            "code": "invalid_json_schema",
        }
    }
