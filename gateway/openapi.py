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


_SECURITY = {
    "bearer": {"type": "http", "scheme": "bearer", "description": "An API token (`gw_…`) with one of the route's roles."},
    "signature": {"type": "apiKey", "in": "header", "name": "X-Gateway-Signature",
                  "description": "hex(HMAC-SHA256(orders.webhook_secret, raw request body)); no bearer token."},
}  # fmt: skip
_REFUSED = {  # what 401 and 403 mean for each kind of route
    "bearer": ((401, "no or bad token"), (403, "role not allowed")),
    "signature": ((401, "bad or missing X-Gateway-Signature, or order intake off (no webhook secret)"),),
}


def document() -> dict:
    paths: dict[str, dict] = {}
    schemas: dict[str, dict] = {"Error": _ERROR}
    for r in ROUTES:
        signed = r.auth == "signature"
        op: dict = {
            "summary": r.summary,
            "operationId": r.handler.__name__,
            "description": ("Signed webhook (POS / shop): X-Gateway-Signature over the raw body." if signed
                            else f"Roles: {', '.join(r.roles)}."),
            "security": [{r.auth: []}],
            "parameters": [
                {"name": p, "in": "path", "required": True, "schema": {"type": "integer" if p.endswith("_id") else "string"}}
                for p in re.findall(r"{(\w+)}", r.path)
            ],
            "responses": {
                str(r.status): {"description": "OK", "content": {"application/json": {"schema": {"type": "object"}}}},
                **{str(c): {"description": d, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
                   for c, d in ((400, "malformed"), *_REFUSED[r.auth], (404, "not found"), (409, "conflict"),
                                (422, "invalid"))},
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
        "components": {"schemas": schemas, "securitySchemes": _SECURITY},
    }
