"""The OpenAPI schema's shared parts (drf-spectacular): the API-key security scheme,
list views recognised by their keyset (so their answers are documented as pages), and
the problem documents every operation may answer with."""

from __future__ import annotations

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.openapi import AutoSchema

PROBLEM = {
    "type": "object", "required": ["type", "title", "status", "detail"],
    "properties": {
        "type": {"type": "string"}, "title": {"type": "string"},
        "status": {"type": "integer"}, "detail": {"type": "string"},
        "errors": {"type": "array", "items": {
            "type": "object", "required": ["field", "code", "detail"],
            "properties": {"field": {"type": ["string", "null"]},
                           "code": {"type": "string"}, "detail": {"type": "string"}}}},
    },
}
PROBLEM_STATUSES = {
    "400": "The request is not valid: each problem is named in `errors`.",
    "401": "No API key, or one that is unknown or revoked.",
    "403": "The key's scope does not allow this.",
    "404": "No such object in this workspace (another workspace's looks the same).",
    "405": "This method is not allowed here.",
    "406": "The Accept header asks for something this API does not answer with.",
    "409": "The request conflicts with the object's state (e.g. an address taken).",
    "415": "The body's content type is not JSON (or multipart where files are allowed).",
    "422": "The Idempotency-Key was used with another body.",
    "429": "Over the key's rate limit; see Retry-After.",
}


class ApiKeyScheme(OpenApiAuthenticationExtension):
    target_class = "helpdesk.api.ApiKeyAuthentication"
    name = "ApiKey"

    def get_security_definition(self, auto_schema):
        return {"type": "http", "scheme": "bearer",
                "description": "An API key: `Authorization: Bearer hd_...`."}


class ApiSchema(AutoSchema):
    def _is_list_view(self, serializer=None) -> bool:
        if self.method == "GET" and getattr(self.view, "keyset", None):
            return True  # a KeysetPagination page
        return super()._is_list_view(serializer)

    def get_operation_id(self) -> str:
        name = self.path.strip("/").replace("api/v1/", "").replace("/", "_")
        name = name.replace("{", "").replace("}", "").replace("-", "_")
        verb = "list" if self._is_list_view() else self.method.lower()
        return f"{name}_{verb}"


def add_problem_responses(result, generator, request, public):
    """POSTPROCESSING_HOOKS: every operation documents the problem documents it may
    answer with (application/problem+json)."""
    result.setdefault("components", {}).setdefault("schemas", {})["Problem"] = PROBLEM
    ref = {"$ref": "#/components/schemas/Problem"}
    for path in result.get("paths", {}).values():
        for operation in path.values():
            responses = operation.setdefault("responses", {})
            for status, text in PROBLEM_STATUSES.items():
                responses.setdefault(status, {"description": text, "content": {
                    "application/problem+json": {"schema": ref}}})
    return result
