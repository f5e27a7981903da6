"""Parsing and validating a submit body into a :class:`~data_exhaust.manager.Submission`.

Validation follows api.md §4 to the letter: the first failure wins, in the documented order,
and every message says what to send instead. Nothing is written before all checks pass.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from data_exhaust.api.errors import ApiError, client_error
from data_exhaust.datasets import ConfigError, Dataset, SubmitContext
from data_exhaust.jobs import OUTPUT_FORMATS
from data_exhaust.keys import Caller
from data_exhaust.manager import Submission
from data_exhaust.secrets_box import JOB_SECRETS, SecretBox


@dataclass(frozen=True)
class Names:
    """The field names of one API flavour (dataset API vs the older report API)."""

    dataset: str = "dataset"
    config: str = "datasetConfig"


DATASET_API = Names()
REPORT_API = Names(dataset="jobId", config="jobConfig")


def parse_body(raw: bytes) -> tuple[dict[str, Any], str | None]:
    """The ``request`` object of a body and its ``params.msgid``."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise client_error(f"the body is not valid JSON ({exc.args[0]})") from None
    if not isinstance(body, dict):
        raise client_error('the body must be a JSON object like {"request": {...}}')
    params = body.get("params")
    msgid = params.get("msgid") if isinstance(params, dict) else None
    request = body.get("request")
    if not isinstance(request, dict):
        raise client_error('the body must have a "request" object')
    return request, msgid if isinstance(msgid, str) else None


def _text(request: dict[str, Any], name: str) -> str:
    value = request.get(name)
    if value is None or value == "":
        raise client_error(f"{name} is empty")
    if not isinstance(value, str):
        raise client_error(f"{name} must be a string")
    return value.strip()


def _tag(request: dict[str, Any]) -> str:
    tag = _text(request, "tag")
    if not tag:
        raise client_error("tag is empty")
    if len(tag) > 100:
        raise client_error("tag must be at most 100 characters")
    if "/" in tag or ":" in tag:
        raise client_error("tag must not contain '/' or ':'")
    return tag


def _config(request: dict[str, Any], name: str) -> dict[str, Any]:
    config = request.get(name)
    if config is None or config == {} or config == "":
        raise client_error(f"{name} is empty")
    if not isinstance(config, dict):
        raise client_error(f"{name} must be a JSON object")
    return config


def _optional_text(request: dict[str, Any], name: str, max_len: int = 200) -> str | None:
    value = request.get(name)
    if value is None or value == "":
        return None
    if not isinstance(value, str) or len(value) > max_len:
        raise client_error(f"{name} must be a string of at most {max_len} characters")
    return value


def _output_format(request: dict[str, Any]) -> str:
    value = request.get("output_format") or "csv"
    if value not in OUTPUT_FORMATS:
        raise client_error(
            f"output_format '{value}' is not supported; use one of {', '.join(OUTPUT_FORMATS)}"
        )
    return str(value)


def build_submission(
    request: dict[str, Any],
    *,
    names: Names,
    caller: Caller,
    channel: str,
    user_id: str | None,
    datasets: dict[str, Dataset],
    submit: SubmitContext,
    box: SecretBox,
) -> Submission:
    """Validate ``request`` in the documented order; a Submission or an ApiError."""
    tag = _tag(request)
    dataset_id = _text(request, names.dataset)
    config = _config(request, names.config)
    dataset = datasets.get(dataset_id)
    if dataset is None or dataset.internal:
        public = [name for name, found in datasets.items() if not found.internal]
        raise client_error(
            f"{names.dataset} '{dataset_id}' is not supported; "
            f"supported datasets: {', '.join(public)}"
        )
    requested_channel = _optional_text(request, "requestedChannel", 100)
    if requested_channel is not None and requested_channel != channel:
        raise client_error(
            f"requestedChannel '{requested_channel}' must equal X-Channel-ID "
            f"'{channel}' (or be left out)"
        )
    output_format = _output_format(request)
    if output_format not in dataset.formats:
        raise client_error(
            f"dataset '{dataset_id}' can only be written as {', '.join(dataset.formats)}"
        )
    secret_data = _pii_checks(request, dataset, caller, box)
    try:
        normalised = dataset.validate(config, submit)
    except (
        ConfigError
    ) as exc:  # datasets speak of "datasetConfig"; the report API calls it jobConfig
        raise client_error(str(exc).replace(DATASET_API.config, names.config)) from None
    requested_by = _optional_text(request, "requestedBy") or user_id or caller.name
    return Submission(
        dataset=dataset_id,
        tag=tag,
        channel=channel,
        requested_by=requested_by,
        config=normalised,
        output_format=output_format,
        secret_data=secret_data,
    )


def _pii_checks(
    request: dict[str, Any], dataset: Dataset, caller: Caller, box: SecretBox
) -> str | None:
    """PII datasets need the pii scope and an encryption key, which is sealed, never echoed."""
    key = request.get("encryptionKey")
    if key is not None and (not isinstance(key, str) or not 8 <= len(key) <= 128):
        raise client_error("encryptionKey must be a string of 8 to 128 characters")
    if not dataset.pii:
        return None
    if "pii" not in caller.scopes:
        raise ApiError(
            "FORBIDDEN",
            f"dataset '{dataset.id}' contains personal data; it needs an "
            "API key with the 'pii' scope",
        )
    if not key:
        raise client_error(
            f"encryptionKey is required for dataset '{dataset.id}': the file is "
            "delivered in a zip encrypted with it (8 to 128 characters)"
        )
    return box.seal(orjson.dumps({"encryptionKey": key}).decode(), JOB_SECRETS)
