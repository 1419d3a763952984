"""`/openapi.json`, generated from the admin route table and the models that validate requests,
so the document cannot drift from what the server accepts."""

from __future__ import annotations

import re

from gateway import __version__
from gateway.api import ROUTES

_ERROR = {
    "type": "object",
    "properties": {"error": {"type": "object", "required": ["code", "message"], "properties": {
        "code": {"type": "string"}, "message": {"type": "string"}, "field": {"type": "string"}}}},
}  # fmt: skip


def document() -> dict:
    paths: dict[str, dict] = {}
    schemas: dict[str, dict] = {"Error": _ERROR}
    for r in ROUTES:
        op: dict = {
            "summary": r.summary,
            "operationId": r.handler.__name__,
            "description": f"Roles: {', '.join(r.roles)}.",
            "security": [{"bearer": []}],
            "parameters": [
                {"name": p, "in": "path", "required": True, "schema": {"type": "integer" if p.endswith("_id") else "string"}}
                for p in re.findall(r"{(\w+)}", r.path)
            ],
            "responses": {
                str(r.status): {"description": "OK", "content": {"application/json": {"schema": {"type": "object"}}}},
                **{str(c): {"description": d, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
                   for c, d in ((400, "malformed"), (401, "no or bad token"), (403, "role not allowed"),
                                (404, "not found"), (409, "conflict"), (422, "invalid"))},
            },
        }
        if r.body is not None:
            schema = r.body.model_json_schema(ref_template="#/components/schemas/{model}")
            schemas.update(schema.pop("$defs", {}))
            schemas[r.body.__name__] = schema
            op["requestBody"] = {"required": True, "content": {"application/json": {
                "schema": {"$ref": f"#/components/schemas/{r.body.__name__}"}}}}
        paths.setdefault("/api/v1" + r.path, {})[r.method.lower()] = op
    return {
        "openapi": "3.1.0",
        "info": {"title": "Advisor Gateway admin API", "version": __version__},
        "paths": paths,
        "components": {"schemas": schemas, "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
    }
