"""A package's options and its Marathon app, as Cosmos computes them (pure).

``options_with_defaults(schema, options)`` fills every ``default`` of ``config.json`` (nested
objects too) under the user's options; ``schema_errors`` checks the result against the schema
(JSON Schema draft 4, ``jsonschema``) and returns one entry per failure in the shape the
``dcos`` CLI prints (``instance.pointer``, ``keyword``, ``found``/``expected``/``missing``/
``minimum``, ``message``); ``render_app`` renders ``marathon.json.mustache`` with the options and
``resource`` and parses the result, which must be a JSON object.

Mustache follows Cosmos: no HTML escaping; a string value is inserted JSON-escaped without its
quotes (so ``"{{name}}"`` stays valid JSON whatever the name holds), booleans as ``true``/``false``,
null as nothing; ``{{#asJson}}path{{/asJson}}`` inserts a value as JSON. Partials are not read.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any

import chevron
from chevron.tokenizer import tokenize
from jsonschema import Draft4Validator
from jsonschema.exceptions import ValidationError


class TemplateError(ValueError):
    """The template cannot be rendered, or its output is not a JSON object."""


def schema_defaults(schema: dict[str, Any]) -> dict[str, Any]:
    """The defaults a ``config.json`` declares, nesting kept (a property's ``default`` wins over
    its own ``properties``' defaults)."""
    out: dict[str, Any] = {}
    properties = schema.get("properties")
    if not isinstance(properties, dict):
        return out
    for name, prop in properties.items():
        if not isinstance(prop, dict):
            continue
        if "default" in prop:
            out[name] = prop["default"]
        elif isinstance(prop.get("properties"), dict):
            out[name] = schema_defaults(prop)
    return out


def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``over`` on top of ``base``; objects merge key by key, anything else is replaced."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def options_with_defaults(schema: dict[str, Any] | None, options: dict[str, Any] | None) -> dict[str, Any]:
    return merge(schema_defaults(schema or {}), options or {})


def _pointer(path: Iterable[Any]) -> str:
    return "".join("/" + str(part).replace("~", "~0").replace("/", "~1") for part in path)


def _error_entry(error: ValidationError) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "level": "error",
        "domain": "validation",
        "keyword": error.validator,
        "instance": {"pointer": _pointer(error.absolute_path)},
        "schema": {"loadingURI": "#", "pointer": _pointer(list(error.absolute_schema_path)[:-1])},
        "message": error.message,
    }
    value = error.validator_value
    if error.validator == "required":
        present = error.instance if isinstance(error.instance, dict) else {}
        entry["required"] = list(value)
        entry["missing"] = [name for name in value if name not in present]
    elif error.validator == "type":
        entry["found"] = _json_type(error.instance)
        entry["expected"] = [value] if isinstance(value, str) else list(value)
    elif error.validator in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
        entry[error.validator] = value
        entry["found"] = error.instance
    elif error.validator == "enum":
        entry["enum"] = list(value)
        entry["value"] = error.instance
    elif error.validator == "additionalProperties":
        known = set(error.schema.get("properties") or {})
        entry["unwanted"] = sorted(k for k in (error.instance or {}) if k not in known)
    elif error.validator in ("minLength", "maxLength", "pattern", "minItems", "maxItems"):
        entry[error.validator] = value
        entry["value"] = error.instance
    return entry


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def schema_errors(schema: dict[str, Any], document: Any) -> list[dict[str, Any]]:
    """Every way ``document`` breaks ``schema``, in document order; [] when it holds."""
    errors = sorted(Draft4Validator(schema).iter_errors(document),
                    key=lambda e: (_pointer(e.absolute_path), str(e.validator)))
    return [_error_entry(e) for e in errors]


def describe_error(entry: dict[str, Any]) -> str:
    """One line naming the field: ``mem: 1 is less than the minimum of 32``."""
    path = entry["instance"]["pointer"].lstrip("/").replace("/", ".")
    if entry["keyword"] == "required" and entry.get("missing"):
        where = (path + ".") if path else ""
        return "; ".join(f"{where}{name}: required" for name in entry["missing"])
    return f"{path or '(options)'}: {entry['message']}"


class _JsonBool(str):
    """``true``/``false`` when inserted, falsy for sections when false (as mustache.java does)."""

    _CHEVRON_return_scope_when_falsy = True
    value: bool

    def __new__(cls, value: bool) -> _JsonBool:
        made = super().__new__(cls, "true" if value else "false")
        made.value = value
        return made

    def __bool__(self) -> bool:
        return self.value


def _context(value: Any, in_array: bool = False) -> Any:
    if isinstance(value, bool):
        return _JsonBool(value)
    if isinstance(value, str):
        # Cosmos keeps the quotes of strings that are array items, and drops them elsewhere.
        quoted = json.dumps(value)
        return quoted if in_array else quoted[1:-1]
    if isinstance(value, list):
        return [_context(v, in_array=True) for v in value]
    if isinstance(value, dict):
        return {k: _context(v) for k, v in value.items()}
    return value


def _lookup(data: dict[str, Any], dotted: str) -> Any:
    value: Any = data
    for part in dotted.strip().split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def render_template(template: str, data: dict[str, Any]) -> dict[str, Any]:
    """Renders ``template`` with ``data``; the output must be a JSON object."""
    try:
        tokens = list(tokenize(template))
    except Exception as exc:   # chevron raises ChevronError and bare exceptions on bad tags
        raise TemplateError(f"mustache: {exc}") from None
    if any(kind in ("partial", "set delimiter") for kind, _ in tokens):
        raise TemplateError("mustache: partials and delimiter changes are not supported")
    tokens = [("no escape", key) if kind == "variable" else (kind, key) for kind, key in tokens]
    as_json: Callable[[str, Any], str] = lambda text, _render: json.dumps(_lookup(data, text))  # noqa: E731
    context = {**_context(data), "asJson": as_json}
    text = chevron.render(tokens, context, partials_path=None, partials_dict={})
    try:
        rendered = json.loads(text)
    except ValueError as exc:
        raise TemplateError(f"the rendered template is not JSON ({exc}): {text[:300]}") from None
    if not isinstance(rendered, dict):
        raise TemplateError("the rendered template must be a JSON object (a Marathon app)")
    return rendered


def render_app(template: str, options: dict[str, Any], resource: dict[str, Any] | None) -> dict[str, Any]:
    """The Marathon app of a package: ``options`` (defaults filled, already validated) and the
    package's ``resource`` as ``resource``."""
    data = merge(options, {"resource": resource}) if resource is not None else options
    return render_template(template, data)
