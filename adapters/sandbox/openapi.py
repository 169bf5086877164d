"""Validate HTTP requests and responses against X's OpenAPI spec.

The fake X API (:mod:`adapters.sandbox.fake_x`) runs every request it receives and every JSON
response it emits through :class:`SpecValidator`, so the test suite notices as soon as the bridge
(or the fake itself) drifts from what the real API documents.

The spec is X API v2 **2.167**, an OpenAPI **3.0.0** document vendored beside this module. Schemas
are checked with ``openapi_schema_validator.OAS30Validator`` (which understands ``nullable`` and
``discriminator``); every ``$ref`` is resolved over the whole spec through a ``referencing``
registry in which the spec is registered under :data:`SPEC_URI`.

Known drift between 2.167 and the live API's error bodies is accepted through the small, explicit
allow-list :data:`DRIFT_ERROR_SCHEMAS` (see its comment); nothing else that fails the spec passes.
"""

from __future__ import annotations

import email.parser
import email.policy
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import parse_qsl, quote

from jsonschema.exceptions import ValidationError
from openapi_schema_validator import OAS30Validator, oas30_format_checker
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT4

__all__ = [
    "DEFAULT_SPEC_PATH",
    "DRIFT_ERROR_SCHEMAS",
    "HTTP_METHODS",
    "SPEC_URI",
    "FormPart",
    "OperationMatch",
    "SpecValidator",
    "parse_form",
]

#: The vendored spec (X API v2 2.167), shipped as package data beside this module.
DEFAULT_SPEC_PATH: Path = Path(__file__).resolve().parent / "x-openapi-2.167.json"

#: The URI under which the whole spec is registered, so ``$ref``s anywhere in it resolve.
SPEC_URI = "urn:xdm-bridge:x-openapi-spec"

#: The HTTP methods an OpenAPI path item may declare (lower case, as in the spec).
HTTP_METHODS: frozenset[str] = frozenset(
    {"get", "put", "post", "delete", "options", "head", "patch", "trace"}
)

# Known drift, accepted on purpose (bodies reported by X's clients and its own playground emulator).
# Spec 2.167 dropped the generic ``about:blank`` problem from the ``Problem`` union and its
# ``application/json`` error schema is a bare ``Error {code, message}``. Yet the live API sends:
#   * ``{"title": "Unauthorized", "type": "about:blank", "status": 401, "detail": "Unauthorized"}``
#     (problem+json) for missing/expired tokens, missing scopes (403 "Forbidden") and rate limits
#     (429 "Too Many Requests");
#   * the legacy ``{"errors": [{"code": 88, "message": "Rate limit exceeded"}]}`` (application/json)
#     documented for 429 and used for the numeric refusal codes (349, 150, 93, ...).
# Exactly these two shapes are accepted for error statuses (>= 400) and their own content type,
# when the body fails the spec's declared schema. Keys are content types.
DRIFT_ERROR_SCHEMAS: Mapping[str, Mapping[str, Any]] = {
    "application/problem+json": {
        "type": "object",
        "required": ["title", "type", "status", "detail"],
        "properties": {
            "title": {"type": "string"},
            "type": {"type": "string", "enum": ["about:blank"]},
            "status": {"type": "integer"},
            "detail": {"type": "string"},
        },
        "additionalProperties": False,
    },
    "application/json": {
        "type": "object",
        "required": ["errors"],
        "properties": {
            "errors": {
                "type": "array",
                "minItems": 1,
                "items": {
                    "type": "object",
                    "required": ["code", "message"],
                    "properties": {"code": {"type": "integer"}, "message": {"type": "string"}},
                    "additionalProperties": False,
                },
            }
        },
        "additionalProperties": False,
    },
}

_MAX_MESSAGE = 300


class OperationMatch(NamedTuple):
    """The spec operation a concrete request path resolved to."""

    path_template: str
    """The spec's path key, e.g. ``/2/dm_conversations/with/{participant_id}/messages``."""
    operation: Mapping[str, Any]
    """The raw OpenAPI operation object."""
    path_params: dict[str, str]
    """Path parameter values taken from the concrete path (percent-decoding is the caller's job)."""


@dataclass(frozen=True)
class FormPart:
    """One field of a ``multipart/form-data`` or ``application/x-www-form-urlencoded`` body."""

    name: str
    value: bytes
    filename: str | None = None
    content_type: str | None = None

    @property
    def text(self) -> str:
        """The value decoded as UTF-8 (undecodable bytes replaced)."""
        return self.value.decode("utf-8", errors="replace")


def media_type_of(content_type: str | None) -> str:
    """Return the bare, lower-case media type of a ``Content-Type`` value (``""`` if none)."""
    if not content_type:
        return ""
    return content_type.split(";", 1)[0].strip().lower()


def parse_form(content_type: str | None, body: bytes) -> list[FormPart]:
    """Parse a ``multipart/form-data`` or URL-encoded form body into its parts.

    Raises :class:`ValueError` if the body is not a form of that kind or cannot be parsed.
    """
    mtype = media_type_of(content_type)
    if mtype == "application/x-www-form-urlencoded":
        try:
            pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True, strict_parsing=bool(body))
        except (UnicodeDecodeError, ValueError) as exc:
            raise ValueError(f"malformed form body: {exc}") from exc
        return [FormPart(name=k, value=v.encode("utf-8")) for k, v in pairs]
    if mtype != "multipart/form-data":
        raise ValueError(f"not a form content type: {content_type!r}")
    assert content_type is not None
    head = b"Content-Type: " + content_type.encode("latin-1") + b"\r\nMIME-Version: 1.0\r\n\r\n"
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + body)
    if not message.is_multipart() or message.defects:
        raise ValueError("malformed multipart body")
    parts: list[FormPart] = []
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if not isinstance(name, str):
            raise ValueError("multipart part without a form field name")
        payload = part.get_payload(decode=True)
        filename = part.get_filename()
        ctype = part.get("content-type")
        parts.append(
            FormPart(
                name=name,
                value=payload if isinstance(payload, bytes) else b"",
                filename=filename,
                content_type=str(ctype) if ctype is not None else None,
            )
        )
    return parts


def _escape_pointer(token: str) -> str:
    return token.replace("~", "~0").replace("/", "~1")


def _clip(text: str) -> str:
    return text if len(text) <= _MAX_MESSAGE else text[: _MAX_MESSAGE - 3] + "..."


def _format_error(where: str, error: ValidationError) -> str:
    location = "/".join(str(p) for p in error.absolute_path)
    suffix = f" (at /{location})" if location else ""
    return f"{where}: {_clip(error.message)}{suffix}"


class _Template:
    """A compiled spec path template."""

    __slots__ = ("literal_mask", "names", "regex", "template")

    def __init__(self, template: str) -> None:
        self.template = template
        segments = template.strip("/").split("/")
        pattern_parts: list[str] = []
        names: list[str] = []
        mask: list[int] = []
        for segment in segments:
            params = re.findall(r"\{([^}]+)\}", segment)
            if not params:
                pattern_parts.append(re.escape(segment))
                mask.append(1)
                continue
            # Whole-segment or embedded parameters; each captures up to the next "/".
            piece = re.escape(segment)
            for name in params:
                piece = piece.replace(
                    re.escape("{" + name + "}"), f"(?P<{_group(name, len(names))}>[^/]+)", 1
                )
                names.append(name)
            pattern_parts.append(piece)
            mask.append(0)
        self.regex = re.compile("^/" + "/".join(pattern_parts) + "$")
        self.names = tuple(names)
        # Lexicographic preference: a literal segment beats a parameter at the same position.
        self.literal_mask = tuple(mask)

    def match(self, path: str) -> dict[str, str] | None:
        found = self.regex.match(path)
        if found is None:
            return None
        return {name: found.group(_group(name, i)) for i, name in enumerate(self.names)}


def _group(name: str, index: int) -> str:
    return f"p{index}_" + re.sub(r"\W", "_", name)


class SpecValidator:
    """Validates requests and responses against an OpenAPI 3.0 spec (by default X API v2 2.167).

    Load it once (it parses the whole spec) and share it; it is stateless after construction
    apart from a cache of compiled schema validators. :meth:`default` returns a process-wide
    instance for the vendored spec.
    """

    _default: SpecValidator | None = None

    def __init__(self, spec_path: str | Path | None = None) -> None:
        path = Path(spec_path) if spec_path is not None else DEFAULT_SPEC_PATH
        with path.open("rb") as handle:
            spec: dict[str, Any] = json.load(handle)
        self.spec_path: Path = path
        self.spec: Mapping[str, Any] = spec
        """The parsed spec document."""
        self.version: str = str(spec.get("info", {}).get("version", ""))
        """The spec's ``info.version`` (``"2.167"`` for the vendored one)."""
        resource = Resource.from_contents(spec, default_specification=DRAFT4)
        self._registry: Registry[Any] = Registry().with_resource(SPEC_URI, resource)
        self._validators: dict[str, Any] = {}
        self._templates: list[_Template] = [_Template(t) for t in spec.get("paths", {})]
        # Most literal first, so the first match is the most specific one.
        self._templates.sort(key=lambda t: tuple(-m for m in t.literal_mask))

    @classmethod
    def default(cls) -> SpecValidator:
        """Return a shared validator for the vendored spec (loaded on first use)."""
        if cls._default is None:
            cls._default = cls()
        return cls._default

    # ------------------------------------------------------------------ lookup

    def match(self, method: str, path: str) -> OperationMatch | None:
        """Find the operation serving ``method path`` (a concrete path, no query string).

        Literal segments win over parameters (``/2/dm_conversations/with/{participant_id}/...``
        beats ``/2/dm_conversations/{id}/...``). Returns ``None`` if no path template declaring
        ``method`` matches.
        """
        verb = method.lower()
        path = path.split("?", 1)[0]
        if len(path) > 1:
            path = path.rstrip("/")
        for template in self._templates:
            params = template.match(path)
            if params is None:
                continue
            item = self.spec["paths"][template.template]
            operation = item.get(verb)
            if isinstance(operation, Mapping):
                return OperationMatch(template.template, operation, params)
        return None

    def operation_pointer(self, method: str, path_template: str) -> str:
        """JSON pointer (within the spec) of an operation object."""
        return f"/paths/{_escape_pointer(path_template)}/{method.lower()}"

    def required_scopes(self, operation: Mapping[str, Any]) -> frozenset[str] | None:
        """OAuth 2.0 user-token scopes an operation requires (``None`` if it does not accept them)."""
        for requirement in operation.get("security", self.spec.get("security", [])):
            if isinstance(requirement, Mapping) and "OAuth2UserToken" in requirement:
                return frozenset(requirement["OAuth2UserToken"])
        return None

    def oauth2_scopes(self) -> frozenset[str]:
        """All scopes the spec's ``OAuth2UserToken`` scheme defines."""
        schemes = self.spec.get("components", {}).get("securitySchemes", {})
        flows = schemes.get("OAuth2UserToken", {}).get("flows", {})
        scopes: set[str] = set()
        for flow in flows.values():
            scopes.update(flow.get("scopes", {}))
        return frozenset(scopes)

    # ---------------------------------------------------------------- requests

    def validate_request(
        self,
        method: str,
        path: str,
        query: Mapping[str, str],
        content_type: str | None,
        body: bytes,
    ) -> list[str]:
        """Return the problems found in a request (empty if it conforms to the spec).

        Checks: the operation exists; path parameters against their schemas; query parameters
        (undeclared ones, missing required ones, and values against their schemas, splitting
        ``style: form, explode: false`` arrays on commas); and the body against the declared
        ``requestBody`` content (JSON validated fully; form bodies field by field, binary parts
        only for presence).
        """
        found = self.match(method, path)
        if found is None:
            return [f"{method.upper()} {path} is not an operation in the spec"]
        template, operation, path_params = found
        op_pointer = self.operation_pointer(method, template)
        problems: list[str] = []
        declared_query: set[str] = set()
        for param, schema_pointer in self._parameters(template, method):
            name = str(param.get("name"))
            where = param.get("in")
            if where == "path":
                raw = path_params.get(name)
                if raw is None:
                    problems.append(f"path parameter {name!r} missing")
                    continue
                problems.extend(
                    self._check_scalar_param(f"path parameter {name!r}", raw, param, schema_pointer)
                )
            elif where == "query":
                declared_query.add(name)
                if name not in query:
                    if param.get("required"):
                        problems.append(f"required query parameter {name!r} missing")
                    continue
                problems.extend(
                    self._check_scalar_param(f"query parameter {name!r}", query[name], param, schema_pointer)
                )
        for name in query:
            if name not in declared_query:
                problems.append(f"query parameter {name!r} is not declared by {template}")
        problems.extend(self._check_body(operation, op_pointer, content_type, body))
        return problems

    def _parameters(self, template: str, method: str) -> list[tuple[Mapping[str, Any], str]]:
        """Path-item and operation parameters, resolved, with the pointer of each one's schema."""
        collected: dict[tuple[str, str], tuple[Mapping[str, Any], str]] = {}
        base = f"/paths/{_escape_pointer(template)}"
        for owner in (base, f"{base}/{method.lower()}"):
            node = self._at(owner)
            for index, raw in enumerate(node.get("parameters", [])):
                param, pointer = self._resolve(raw, f"{owner}/parameters/{index}")
                key = (str(param.get("in")), str(param.get("name")))
                collected[key] = (param, f"{pointer}/schema")
        return list(collected.values())

    def _check_scalar_param(
        self, where: str, raw: str, param: Mapping[str, Any], schema_pointer: str
    ) -> list[str]:
        schema, _ = self._resolve(param.get("schema", {}), schema_pointer)
        try:
            value = self._coerce(raw, schema, schema_pointer, split_arrays=param.get("explode") is not True)
        except ValueError as exc:
            return [f"{where}: {exc}"]
        return self.check(value, schema_pointer, where)

    def _coerce(self, raw: str, schema: Mapping[str, Any], pointer: str, *, split_arrays: bool) -> Any:
        kind = schema.get("type")
        if kind == "array":
            items, items_pointer = self._resolve(schema.get("items", {}), f"{pointer}/items")
            pieces = raw.split(",") if split_arrays else [raw]
            return [self._coerce(piece, items, items_pointer, split_arrays=False) for piece in pieces]
        if kind == "integer":
            try:
                return int(raw, 10)
            except ValueError:
                raise ValueError(f"{raw!r} is not an integer") from None
        if kind == "number":
            try:
                return float(raw)
            except ValueError:
                raise ValueError(f"{raw!r} is not a number") from None
        if kind == "boolean":
            if raw not in ("true", "false"):
                raise ValueError(f"{raw!r} is not a boolean (true/false)")
            return raw == "true"
        return raw

    def _check_body(
        self, operation: Mapping[str, Any], op_pointer: str, content_type: str | None, body: bytes
    ) -> list[str]:
        raw_body = operation.get("requestBody")
        if raw_body is None:
            # Operations without a body (e.g. media finalize) ignore whatever is sent.
            return []
        request_body, rb_pointer = self._resolve(raw_body, f"{op_pointer}/requestBody")
        if not body:
            return ["request body is required"] if request_body.get("required") else []
        content: Mapping[str, Any] = request_body.get("content", {})
        mtype = media_type_of(content_type)
        if mtype not in content:
            return [
                f"request content type {mtype or '(none)'!r} not accepted; expected one of {sorted(content)}"
            ]
        schema_pointer = f"{rb_pointer}/content/{_escape_pointer(mtype)}/schema"
        if mtype == "application/json" or mtype.endswith("+json"):
            try:
                document = json.loads(body)
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                return [f"request body is not valid JSON: {exc}"]
            return self.check(document, schema_pointer, "request body")
        if mtype in ("multipart/form-data", "application/x-www-form-urlencoded"):
            return self._check_form(content_type, body, schema_pointer)
        return []

    def _check_form(self, content_type: str | None, body: bytes, schema_pointer: str) -> list[str]:
        try:
            parts = parse_form(content_type, body)
        except ValueError as exc:
            return [f"request body: {exc}"]
        schema, _ = self._resolve(self._at(schema_pointer), schema_pointer)
        properties: Mapping[str, Any] = schema.get("properties", {})
        problems: list[str] = []
        document: dict[str, Any] = {}
        for part in parts:
            if part.name in document:
                problems.append(f"request body: form field {part.name!r} repeated")
                continue
            prop_pointer = f"{schema_pointer}/properties/{_escape_pointer(part.name)}"
            prop = properties.get(part.name)
            if prop is None:
                document[part.name] = part.text  # additionalProperties decides
                continue
            prop_schema, resolved_pointer = self._resolve(prop, prop_pointer)
            if part.filename is not None or _is_binary(prop_schema):
                document[part.name] = ""  # binary content: presence only
                continue
            try:
                document[part.name] = self._coerce(
                    part.text, prop_schema, resolved_pointer, split_arrays=True
                )
            except ValueError as exc:
                problems.append(f"request body: form field {part.name!r}: {exc}")
                document[part.name] = part.text
        problems.extend(self.check(document, schema_pointer, "request body"))
        return problems

    # --------------------------------------------------------------- responses

    def validate_response(
        self,
        method: str,
        path_template: str,
        status: int,
        content_type: str | None,
        body_json: Any,
    ) -> list[str]:
        """Return the problems found in a JSON response body (empty if it conforms).

        The body is checked against the schema declared for ``status`` (else ``default``) and the
        response's content type. For error statuses, a body failing the spec is still accepted if
        it is one of the two documented drift shapes in :data:`DRIFT_ERROR_SCHEMAS`.
        """
        op_pointer = self.operation_pointer(method, path_template)
        try:
            operation = self._at(op_pointer)
        except KeyError:
            return [f"{method.upper()} {path_template} is not an operation in the spec"]
        responses: Mapping[str, Any] = operation.get("responses", {})
        key = str(status)
        if key not in responses:
            key = f"{key[0]}XX" if f"{key[0]}XX" in responses else "default"
        if key not in responses:
            return [f"status {status} is not declared (and there is no default response)"]
        response, resp_pointer = self._resolve(responses[key], f"{op_pointer}/responses/{key}")
        content: Mapping[str, Any] = response.get("content", {})
        mtype = media_type_of(content_type)
        if mtype not in content:
            drift = self._drift_problems(status, mtype, body_json)
            if drift == []:
                return []
            shown = mtype or "(none)"
            return [f"response {status} content type {shown!r} not declared; expected {sorted(content)}"]
        schema_pointer = f"{resp_pointer}/content/{_escape_pointer(mtype)}/schema"
        problems = self.check(body_json, schema_pointer, f"response {status}")
        if problems and self._drift_problems(status, mtype, body_json) == []:
            return []
        return problems

    def _drift_problems(self, status: int, mtype: str, body_json: Any) -> list[str] | None:
        """Problems against the drift allow-list; ``None`` if the allow-list does not apply."""
        if status < 400 or mtype not in DRIFT_ERROR_SCHEMAS:
            return None
        validator = OAS30Validator(DRIFT_ERROR_SCHEMAS[mtype], format_checker=oas30_format_checker)
        return [_format_error("drift", e) for e in validator.iter_errors(body_json)]

    # ------------------------------------------------------------- primitives

    def check(self, instance: Any, schema_pointer: str, where: str) -> list[str]:
        """Validate ``instance`` against the schema at ``schema_pointer`` (a pointer into the spec)."""
        validator = self._validators.get(schema_pointer)
        if validator is None:
            ref = SPEC_URI + "#" + quote(schema_pointer, safe="/~")
            validator = OAS30Validator(
                {"$ref": ref}, registry=self._registry, format_checker=oas30_format_checker
            )
            self._validators[schema_pointer] = validator
        errors: Iterable[ValidationError] = validator.iter_errors(instance)
        return [
            _format_error(where, e) for e in sorted(errors, key=lambda e: list(map(str, e.absolute_path)))
        ]

    def check_component(self, instance: Any, schema_name: str) -> list[str]:
        """Validate ``instance`` against ``#/components/schemas/<schema_name>``."""
        return self.check(instance, f"/components/schemas/{_escape_pointer(schema_name)}", schema_name)

    def _at(self, pointer: str) -> Any:
        node: Any = self.spec
        for token in pointer.split("/")[1:]:
            token = token.replace("~1", "/").replace("~0", "~")
            node = node[int(token)] if isinstance(node, list) else node[token]
        return node

    def _resolve(self, node: Any, pointer: str) -> tuple[Mapping[str, Any], str]:
        """Follow local ``$ref`` chains; return the target and its pointer."""
        seen: set[str] = set()
        while isinstance(node, Mapping) and isinstance(node.get("$ref"), str):
            ref: str = node["$ref"]
            if not ref.startswith("#/") or ref in seen:
                break
            seen.add(ref)
            pointer = ref[1:]
            node = self._at(pointer)
        return (node if isinstance(node, Mapping) else {}), pointer


def _is_binary(schema: Mapping[str, Any]) -> bool:
    if schema.get("format") in ("binary", "byte"):
        return True
    alternatives = schema.get("anyOf", schema.get("oneOf", []))
    return any(isinstance(a, Mapping) and a.get("format") == "binary" for a in alternatives)
