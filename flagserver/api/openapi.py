"""The OpenAPI document of the whole API, built from the marshmallow schemas."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin
from flask import Blueprint, Response, current_app, jsonify

from .. import schemas
from ..rollout import RolloutPlanSchema

bp = Blueprint("openapi", __name__)

# (path, method, summary, request schema, response schema, extra statuses)
OPERATIONS: list[tuple[str, str, str, str | None, str | None, tuple[int, ...]]] = [
    ("/api/v1/envs", "get", "List environments", None, None, ()),
    ("/api/v1/envs", "post", "Create an environment (every flag appears in it, disabled)",
     "Environment", "Environment", (409, 422)),
    ("/api/v1/envs/{env}", "get", "One environment", None, "Environment", (404,)),
    ("/api/v1/envs/{env}/config", "get", "The config document SDKs of the environment receive", None, None, (404,)),
    ("/api/v1/envs/{env}/evaluate", "post", "Evaluate a flag for a user with the SDK's engine",
     "Evaluate", None, (404, 422)),
    ("/api/v1/envs/{env}/flags", "get", "List flags (?q= text, ?tag=)", None, None, (404,)),
    ("/api/v1/envs/{env}/flags", "post", "Create a flag (in every environment)", "Flag", "Flag", (404, 409, 422)),
    ("/api/v1/envs/{env}/flags/{key}", "get", "One flag, with ETag", None, "Flag", (404,)),
    ("/api/v1/envs/{env}/flags/{key}", "put", "Replace a flag (If-Match)", "Flag", "Flag", (404, 412, 422)),
    ("/api/v1/envs/{env}/flags/{key}", "patch",
     'Change some fields: {"rollout": 25}, {"enabled": false} (If-Match)', "FlagPatch", "Flag", (404, 412, 422)),
    ("/api/v1/envs/{env}/flags/{key}", "delete", "Delete a flag from every environment (If-Match)",
     None, None, (404, 412)),
    ("/api/v1/envs/{env}/flags/{key}/stats", "get",
     "Per stage and arm: exposures, each event's rate with a 95% interval, the difference against control, "
     "and the sample-ratio check", None, None, (404,)),
    ("/api/v1/envs/{env}/rollouts", "get", "Rollouts of the environment and where each stands", None, None,
     (404,)),
    ("/api/v1/envs/{env}/flags/{key}/rollout-plan", "get",
     "The flag's rollout plan, its state, the stage ladder and the recent decisions, with ETag", None, None,
     (404,)),
    ("/api/v1/envs/{env}/flags/{key}/rollout-plan", "put",
     "Set the rollout plan (a draft until started; 409 while one runs)", "RolloutPlan", None,
     (404, 409, 412, 422)),
    ("/api/v1/envs/{env}/flags/{key}/rollout-plan/{action}", "post",
     "start, pause, resume, approve (the waiting promotion), rollback (by hand) or abort",
     None, None, (404, 409, 412)),
    ("/api/v1/envs/{env}/segments", "get", "List segments", None, None, (404,)),
    ("/api/v1/envs/{env}/segments", "post", "Create a segment", "Segment", "Segment", (404, 409, 422)),
    ("/api/v1/envs/{env}/segments/{key}", "get", "One segment, with ETag", None, "Segment", (404,)),
    ("/api/v1/envs/{env}/segments/{key}", "put", "Replace a segment (If-Match)", "Segment", "Segment",
     (404, 412, 422)),
    ("/api/v1/envs/{env}/segments/{key}", "patch", "Change some fields of a segment (If-Match)",
     "SegmentPatch", "Segment", (404, 412, 422)),
    ("/api/v1/envs/{env}/segments/{key}", "delete", "Delete a segment no rule uses (If-Match)",
     None, None, (404, 409, 412)),
    ("/api/v1/tokens", "get", "List tokens (never their secrets)", None, None, ()),
    ("/api/v1/tokens", "post", "Create a token; the response carries its secret once, in `token`",
     "Token", "Token", (422,)),
    ("/api/v1/tokens/{token_id}", "delete", "Revoke a token", None, None, (404,)),
    ("/api/v1/audit", "get", "The audit log, newest first (?environment=, ?key=, ?limit=, ?before=)",
     None, None, (400,)),
    ("/api/v1/sdk/config", "get", "The config document of the SDK key's environment (ETag, If-None-Match → 304)",
     None, None, (304,)),
    ("/api/v1/sdk/events", "post",
     "For SDK keys: a batch of exposures and conversions (gzip welcome), stored all or nothing, then 202; "
     "a repeated batch_id is acknowledged and not counted again", None, None, (400, 413, 415, 422)),
    ("/api/v1/openapi.json", "get", "This document", None, None, ()),
    ("/healthz", "get", "The process is alive", None, None, ()),
    ("/readyz", "get", "Storage answers", None, None, (503,)),
]

SCHEMAS = {
    "Flag": schemas.FlagSchema,
    "FlagPatch": schemas.FlagPatchSchema,
    "Segment": schemas.SegmentSchema,
    "SegmentPatch": schemas.SegmentPatchSchema,
    "Environment": schemas.EnvironmentSchema,
    "Token": schemas.TokenSchema,
    "Evaluate": schemas.EvaluateSchema,
    "RolloutPlan": RolloutPlanSchema,
}

ERROR_SCHEMA = {
    "type": "object",
    "properties": {"error": {"type": "object", "properties": {
        "status": {"type": "integer"}, "code": {"type": "string"}, "message": {"type": "string"},
        "fields": {"type": "object", "additionalProperties": {"type": "array", "items": {"type": "string"}}},
    }}},
}


def build_spec(extra_operations: Sequence[tuple[str, str, str, str | None, str | None, tuple[int, ...]]] = ()
               ) -> dict[str, Any]:
    spec = APISpec(title="flagserver", version="0.1.0", openapi_version="3.0.3", plugins=[MarshmallowPlugin()],
                   info={"description": "Feature flags whose rollouts run themselves."})
    spec.components.security_scheme("bearer", {"type": "http", "scheme": "bearer"})
    for name, schema in SCHEMAS.items():
        spec.components.schema(name, schema=schema)
    spec.components.schema("Error", ERROR_SCHEMA)
    paths: dict[str, dict[str, Any]] = {}
    for path, method, summary, request_schema, response_schema, statuses in [*OPERATIONS, *extra_operations]:
        operation: dict[str, Any] = {"summary": summary, "responses": {}}
        if path.startswith("/api/v1/") and path != "/api/v1/openapi.json":
            operation["security"] = [{"bearer": []}]
        params = [p.strip("{}") for p in path.split("/") if p.startswith("{")]
        if params:
            operation["parameters"] = [{"name": p, "in": "path", "required": True, "schema": {"type": "string"}}
                                       for p in params]
        if request_schema:
            operation["requestBody"] = {"required": True, "content": {
                "application/json": {"schema": {"$ref": f"#/components/schemas/{request_schema}"}}}}
        ok = "201" if method == "post" and response_schema else ("204" if method == "delete" else "200")
        content = ({"application/json": {"schema": {"$ref": f"#/components/schemas/{response_schema}"}}}
                   if response_schema else {"application/json": {"schema": {"type": "object"}}})
        operation["responses"][ok] = {"description": "OK"} if ok == "204" else {"description": "OK",
                                                                                   "content": content}
        error_statuses = set(statuses) | ({401, 403} if "security" in operation else set())
        for status in sorted(error_statuses):
            if status == 304:
                operation["responses"]["304"] = {"description": "Not modified"}
                continue
            operation["responses"][str(status)] = {"description": "Error", "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
        paths.setdefault(path, {})[method] = operation
    for path, operations in paths.items():
        spec.path(path=path, operations=operations)
    return spec.to_dict()


@bp.get("/api/v1/openapi.json")
def openapi() -> Response:
    document = current_app.extensions.get("flagserver.openapi")
    if document is None:
        document = current_app.extensions["flagserver.openapi"] = build_spec()
    return jsonify(document)
