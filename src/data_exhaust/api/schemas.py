"""Request bodies as documented in OpenAPI. Routes parse bodies themselves (to answer every
mistake with api.md's exact messages), so these models describe; they do not validate."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field


class Params(BaseModel):
    msgid: str | None = Field(None, description="Client message id, echoed in params.msgid")


class DatasetRequest(BaseModel):
    tag: str = Field(description="Client grouping key, 1–100 characters, no '/' or ':'")
    dataset: str = Field(description="A registered dataset id, e.g. uci-response-exhaust")
    datasetConfig: dict[str, Any] = Field(
        description="Validated by the dataset, e.g. {type, conversationId, startDate, endDate}"
    )
    requestedBy: str | None = None
    requestedChannel: str | None = None
    encryptionKey: str | None = Field(
        None, description="Zip password (8–128 chars); required for PII datasets; never echoed"
    )
    output_format: Literal["csv", "csv.gz", "jsonl", "parquet"] = "csv"


class SubmitBody(BaseModel):
    id: str = "ekstep.analytics.dataset.request.submit"
    ver: str = "1.0"
    ts: str | None = None
    params: Params | None = None
    request: DatasetRequest


class SearchFilters(BaseModel):
    dataset: str | None = None
    status: Literal["SUBMITTED", "PROCESSING", "SUCCESS", "FAILED", "STOPPED"] | None = None
    requestedDate: str | None = Field(None, description="YYYY-MM-DD")
    tag: str | None = None


class SearchRequest(BaseModel):
    filters: SearchFilters
    limit: int = Field(100, ge=1, le=1000)
    offset: int = Field(0, ge=0)


class SearchBody(BaseModel):
    id: str = "ekstep.analytics.dataset.request.search"
    params: Params | None = None
    request: SearchRequest


class ReportRequest(BaseModel):
    tag: str
    jobId: str = Field(description="The dataset id (the report API's name for it)")
    jobConfig: dict[str, Any]
    output_format: Literal["csv", "csv.gz", "jsonl", "parquet"] = "csv"


class ReportSubmitBody(BaseModel):
    id: str = "ekstep.analytics.job.request.submit"
    ver: str = "1.0"
    params: Params | None = None
    request: ReportRequest


def body(model: type[BaseModel]) -> dict[str, Any]:
    """``openapi_extra`` declaring ``model`` as the JSON request body (self-contained schema)."""
    schema = model.model_json_schema()
    definitions = schema.pop("$defs", {})
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": _inline(schema, definitions)}},
        }
    }


def _inline(node: Any, definitions: dict[str, Any]) -> Any:
    """Replace ``$ref``s to ``$defs`` by the definitions themselves (the models are acyclic)."""
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/"):
            return _inline(definitions[ref.removeprefix("#/$defs/")], definitions)
        return {key: _inline(value, definitions) for key, value in node.items()}
    if isinstance(node, list):
        return [_inline(item, definitions) for item in node]
    return node
