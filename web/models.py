"""The JSON API's request and answer models: validation and the OpenAPI description.

Request models refuse what the handlers cannot use (a 400 naming the parameter, see
``web.openapi``); JSON bodies are strict (no ``"1"`` for 1, no ``true`` for 1, no
unknown keys) while query strings are parsed from text. Answer models describe what
the handlers return; ``tests/integration/test_openapi_fuzz.py`` checks real answers
against them.
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationInfo,
    WithJsonSchema,
    model_validator,
)

from fairway.domain import job_params
from fairway.kernel.contract import parse_ts
from fairway.kernel.ids import ID_PATTERN
from fairway.kernel.reasons import Rejection as Refused
from fairway.kernel.settings import Settings
from fairway.provision_bulk import (
    BURST_HELP,
    MAX_BACKLOG,
    MAX_WEIGHT,
    RATE_HELP,
    Batch,
    MaxBurst,
    MaxRate,
    TenantItem,
    check_batch_size,
)
from fairway.storage import accounts

API_VERSION = "1"
API_DESCRIPTION = (
    "Fairway's JSON API. Authenticate with a bearer token (`Authorization: Bearer fwt_...`,"
    " from `POST /api/tokens`) or with the session cookie of `POST /api/login`; with the"
    " cookie, every POST, PUT, PATCH and DELETE carries the `X-CSRF-Token` header that"
    " `GET /api/me` gives. Every answer is scoped to the caller's tenant (operators see"
    " all): another tenant's objects answer 404 like missing ones. Every error is"
    ' `{"error": <stable code>, "message": <sentence>}`.'
)
SECURITY_SCHEMES: dict[str, Any] = {
    "bearerToken": {
        "type": "http",
        "scheme": "bearer",
        "description": "An API token from POST /api/tokens (fwt_...).",
    },
    "sessionCookie": {
        "type": "apiKey",
        "in": "cookie",
        "name": "session",
        "description": "The signed session cookie set by POST /api/login.",
    },
    "csrfToken": {
        "type": "apiKey",
        "in": "header",
        "name": "X-CSRF-Token",
        "description": "The session's CSRF token (csrf_token of GET /api/me); "
        "required with the session cookie on POST, PUT, PATCH and DELETE.",
    },
}

SETTING_MAXIMUM = "x-fairway-maximum-setting"  # replaced by web.openapi.describe
SETTING_MAX_ITEMS = "x-fairway-max-items-setting"  # likewise, for arrays


def at_most_setting(name: str) -> AfterValidator:
    """Validator metadata: at most ``Settings.<name>`` of the app; pair it with
    ``Field(json_schema_extra=setting_maximum(name))`` so the description says it."""

    def check(value: float, info: ValidationInfo) -> float:
        context = info.context or {}
        settings: Settings | None = context.get("settings")
        most = getattr(settings, name) if settings is not None else math.inf
        if value > most:
            raise ValueError(f"must be at most {most:g} (FAIRWAY_{name.upper()})")
        return value

    return AfterValidator(check)


def setting_maximum(name: str) -> dict[str, Any]:
    """JSON schema marker replaced by the setting's value in :func:`describe`."""
    return {SETTING_MAXIMUM: name}


def setting_max_items(name: str) -> dict[str, Any]:
    """JSON schema marker of an array: ``maxItems`` is the setting's value (:func:`describe`)."""
    return {SETTING_MAX_ITEMS: name}


METRIC_PATTERN = r"^[A-Za-z0-9_:-]{1,64}$"
EARLIEST, LATEST = 0.0, 32503680000.0  # 1970 to the year 3000, as the message contract


class Request(BaseModel):
    """A JSON body: strict types, no unknown keys."""

    model_config = ConfigDict(strict=True, extra="forbid")


class Query(BaseModel):
    """A query string: values parsed from text, unknown names ignored (cache busters)."""

    model_config = ConfigDict(extra="ignore")


class Answer(BaseModel):
    """An answer the API sends."""

    model_config = ConfigDict(extra="forbid")


QUERY_TIME_PATTERN = (
    r"^([0-9]{1,11}(\.[0-9]{1,9})?|[0-9]{4}-[0-9]{2}-[0-9]{2}"
    r"([T ][0-9]{2}:[0-9]{2}(:[0-9]{2}(\.[0-9]{1,6})?)?)?(Z|[+-][0-9]{2}:[0-9]{2})?)$"
)
_QUERY_TIME = re.compile(QUERY_TIME_PATTERN)


def query_time(raw: object) -> datetime:
    """ISO 8601 (an offset, else UTC) or Unix seconds, between 1970 and the year 3000."""
    if isinstance(raw, datetime):
        return raw
    text = str(raw)
    if _QUERY_TIME.fullmatch(text) is None:
        raise ValueError(f"{text[:64]!r} is not ISO 8601 or Unix seconds")
    try:
        seconds = float(text)
    except ValueError:
        try:
            parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(f"{text!r} is not ISO 8601 or Unix seconds") from None
        parsed = parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
        try:
            seconds = parsed.timestamp()
        except (OverflowError, OSError):
            seconds = -1.0
    if not EARLIEST <= seconds <= LATEST:  # NaN fails too
        raise ValueError(f"{text!r} is out of range (1970 to the year 3000)")
    return datetime.fromtimestamp(seconds, UTC)


QueryTime = Annotated[
    datetime,
    BeforeValidator(query_time),
    WithJsonSchema(
        {
            "type": "string",
            "pattern": QUERY_TIME_PATTERN,
            "description": "ISO 8601 (UTC unless it has an offset) or Unix seconds, "
            "1970 to the year 3000",
            "examples": ["2026-01-01T00:00:00Z", "1767225600"],
        }
    ),
]


def _body_time(raw: object) -> float | str:
    try:
        parse_ts(raw)
    except Refused as exc:
        raise ValueError(str(exc.detail).replace("'ts' ", "")) from None
    except OverflowError:
        raise ValueError("out of range") from None
    return raw  # type: ignore[return-value]  # parse_ts accepted a number or a string


BodyTime = Annotated[
    float | str,
    BeforeValidator(_body_time),
    WithJsonSchema(
        {
            "oneOf": [
                {"type": "number", "minimum": EARLIEST, "maximum": LATEST},
                {"type": "string", "format": "date-time", "maxLength": 64},
            ],
            "description": "Epoch seconds, or an RFC 3339 time with an offset",
        }
    ),
]
Id = Annotated[str, Field(pattern=ID_PATTERN)]
# A tenant named in a body; another tenant's answers 404 (not validated further here).
TenantId = Annotated[
    str,
    Field(
        max_length=64, description="operators: the tenant; others: their own (another answers 404)"
    ),
]
PageLimit = Annotated[
    int,
    Field(ge=1, json_schema_extra=setting_maximum("api_page_max")),
    at_most_setting("api_page_max"),
]
FiniteNumber = Annotated[float, Field(allow_inf_nan=False)]
Role = Literal["operator", "admin", "viewer"]


class Error(Answer):
    """Every error answer."""

    error: str = Field(description="a stable code")
    message: str = Field(description="what is wrong, for a person")


# -- sessions and tokens --------------------------------------------------------------------
class Login(Request):
    user: Annotated[str, Field(max_length=256)]
    password: Annotated[str, Field(max_length=1024)]


class Profile(Answer):
    user: str
    tenant: str | None
    role: Role
    subscriptions: list[str]
    csrf_token: str | None = Field(description="for X-CSRF-Token; null with a bearer token")


class LoggedOut(Answer):
    status: Literal["logged out"]


class NewToken(Request):
    name: Annotated[str, Field(max_length=200)] = ""
    ttl_s: (
        Annotated[
            float,
            Field(gt=0, allow_inf_nan=False, json_schema_extra=setting_maximum("api_token_ttl_s")),
            at_most_setting("api_token_ttl_s"),
        ]
        | None
    ) = Field(None, description="default and most: FAIRWAY_API_TOKEN_TTL_S")


class Token(Answer):
    token: str = Field(description="shown once")
    ttl_s: float
    name: str


class PushToken(Answer):
    token: str
    url: str


# -- tenants ----------------------------------------------------------------------------------
MAX_RETENTION_DAYS = 36_500


class NewTenant(Request):
    tenant: Id
    weight: Annotated[int, Field(ge=1, le=MAX_WEIGHT)] = 1
    max_backlog: Annotated[int, Field(ge=1, le=MAX_BACKLOG)] | None = Field(
        None, description="default FAIRWAY_TENANT_MAX_BACKLOG"
    )
    max_rate: MaxRate | None = Field(None, description=RATE_HELP)
    max_burst: MaxBurst | None = Field(None, description=BURST_HELP)


class TenantChange(Request):
    weight: Annotated[int, Field(ge=1, le=MAX_WEIGHT)] | None = None
    retention_days: Annotated[int, Field(ge=1, le=MAX_RETENTION_DAYS)] | None = None
    max_rate: MaxRate | None = Field(None, description=RATE_HELP + "; null: back to the default")
    max_burst: MaxBurst | None = Field(None, description=BURST_HELP + "; null: back to the default")


class Tenant(Answer):
    tenant: str
    weight: int
    max_backlog: int
    retention_days: int | None
    max_rate: float | None = Field(description="null: FAIRWAY_TENANT_RATE")
    max_burst: float | None = Field(description="null: FAIRWAY_TENANT_BURST")


class Tenants(Answer):
    tenants: list[Tenant]


class NewTenants(Batch):
    """Tenants with their devices, provisioned in one batch (``FAIRWAY_PROVISION_BATCH_MAX``
    tenants and as many devices at most)."""

    model_config = ConfigDict(strict=True, extra="forbid")

    tenants: list[TenantItem] = Field(
        min_length=1,
        json_schema_extra=setting_max_items("provision_batch_max"),
        description="their devices, all lists together, are bounded likewise.",
    )

    @model_validator(mode="after")
    def _within_setting(self, info: ValidationInfo) -> NewTenants:
        settings: Settings | None = (info.context or {}).get("settings")
        if settings is not None:
            check_batch_size(self.tenants, settings.provision_batch_max)  # ValueError: a 400
        return self


class NewDevices(Request):
    """Devices of one tenant, registered in one batch."""

    tenant: TenantId | None = None
    devices: list[Id] = Field(
        min_length=1, json_schema_extra=setting_max_items("provision_batch_max")
    )

    @model_validator(mode="after")
    def _within_setting(self, info: ValidationInfo) -> NewDevices:
        settings: Settings | None = (info.context or {}).get("settings")
        if settings is not None and len(self.devices) > settings.provision_batch_max:
            raise ValueError(
                f"a batch holds at most {settings.provision_batch_max} devices"
                f" (FAIRWAY_PROVISION_BATCH_MAX); this one has {len(self.devices)}"
            )
        return self


ProvisionResult = Literal["created", "exists", "refused"]
ProvisionReason = Literal["reserved_id", "duplicate", "exists", "tenant_refused", "queue_mismatch"]


class TenantOutcome(Answer):
    tenant: str
    result: ProvisionResult = Field(description="exists: left as it is (weight unchanged)")
    reason: ProvisionReason | None = Field(description="why it was refused (a stable code)")
    message: str | None


class DeviceOutcome(Answer):
    tenant: str
    device: str
    username: str | None = Field(description="created devices only")
    password: str | None = Field(description="created devices only, shown once")
    result: ProvisionResult = Field(description="exists: same tenant, bound again")
    reason: ProvisionReason | None = Field(description="why it was refused (a stable code)")
    message: str | None


class OutcomeCounts(Answer):
    created: int
    exists: int
    refused: int


class ProvisionCounts(Answer):
    tenants: OutcomeCounts
    devices: OutcomeCounts


class Provisioned(Answer):
    counts: ProvisionCounts
    tenants: list[TenantOutcome] = Field(description="in the order sent")
    devices: list[DeviceOutcome] = Field(description="in the order sent")


class ProvisionedDevices(Answer):
    counts: OutcomeCounts
    devices: list[DeviceOutcome] = Field(description="in the order sent")


class TenantQuery(Query):
    tenant: TenantId | None = None


# -- devices -----------------------------------------------------------------------------------
class NewDevice(Request):
    device: Id
    tenant: TenantId | None = None


class Credentials(Answer):
    tenant: str
    device: str
    username: str
    password: str = Field(description="shown once")


class Rotated(Credentials):
    connections_closed: int = Field(description="-1: the broker could not be asked")


class Latest(Answer):
    ts: str | None
    id: str
    values: dict[str, Any]


class Quarantine(Answer):
    active: bool = Field(description="logins refused (device_quarantined) until `until`")
    since: str | None
    until: str | None
    offences: int = Field(description="repeat offences make the period grow")
    reason: str


class Device(Answer):
    device: str
    tenant: str
    enabled: bool
    online: bool = Field(description="connected, or a stored reading within the online window")
    connected: bool = Field(description="an open broker connection (the monitor's view)")
    online_via: Literal["connection", "reading"] | None
    last_seen: str | None = Field(description="the later of the last connection event and reading")
    created: str | None
    last_reading: str | None
    latest: dict[str, Latest] = Field(description="per stream")
    quarantine: Quarantine | None = Field(
        description="its last quarantine for refusals beyond its budget (null: never)"
    )


class DisabledDevice(Device):
    connections_closed: int = Field(description="-1: the broker could not be asked")


class Devices(Answer):
    devices: list[Device]


class HistoryQuery(Query):
    start: QueryTime | None = Field(None, alias="from")
    end: QueryTime | None = Field(None, alias="to")
    stream: Annotated[str, Field(pattern=ID_PATTERN)] | None = None
    limit: PageLimit = 100
    cursor: Annotated[str, Field(max_length=256)] | None = Field(
        None, description="next_cursor of the previous page"
    )


class Reading(Answer):
    id: str
    stream: str
    ts: str | None
    received: str | None
    values: dict[str, Any]


class History(Answer):
    device: str
    readings: list[Reading]
    next_cursor: str | None


class SeriesQuery(Query):
    metric: Annotated[str, Field(pattern=METRIC_PATTERN)]
    stream: Annotated[str, Field(pattern=ID_PATTERN)] | None = None
    start: QueryTime | None = Field(None, alias="from")
    end: QueryTime | None = Field(None, alias="to")


class Stats(Answer):
    t: str | None
    n: float
    min: float
    max: float
    mean: float


class Series(Answer):
    device: str
    metric: str
    stream: str | None
    resolution: Literal["raw", "minute", "hour"]
    points: list[tuple[str | None, Any]] | list[Stats] = Field(
        description="raw: [time, value] pairs; minute, hour: statistics per bucket"
    )


class RejectionsQuery(Query):
    before: QueryTime | None = None
    limit: PageLimit = 100


class Rejection(Answer):
    model_config = ConfigDict(extra="allow")
    device: str | None = None
    tenant: str | None = None
    reason: str | None = None
    detail: str | None = None
    at: str | None = None


class Rejections(Answer):
    device: str
    rejections: list[Rejection]


# -- rules ----------------------------------------------------------------------------
class NewRule(Request):
    metric: Annotated[str, Field(pattern=METRIC_PATTERN)]
    op: Literal[">", ">=", "<", "<="]
    threshold: FiniteNumber
    hysteresis: Annotated[float, Field(ge=0, allow_inf_nan=False)] = 0.0
    device: Id | None = None
    tenant: TenantId | None = None


class Rule(Answer):
    model_config = ConfigDict(extra="allow")
    rule: str
    tenant: str
    device: str | None
    metric: str
    op: str
    threshold: float
    hysteresis: float
    enabled: bool
    created: str | None


class Rules(Answer):
    rules: list[Rule]


class Deleted(Answer):
    deleted: str


# -- users and subscriptions -----------------------------------------------------------------------
class NewUser(Request):
    user: Id
    password: Annotated[str, Field(min_length=accounts.MIN_PASSWORD, max_length=1024)]
    role: Role = "viewer"
    tenant: TenantId | None = None


class UserChange(Request):
    role: Role | None = None
    enabled: bool | None = None


class User(Answer):
    user: str
    tenant: str | None
    role: Role
    enabled: bool
    subscriptions: list[str]
    created: str | None


class Users(Answer):
    users: list[User]


class Subscriptions(Answer):
    subscriptions: list[str]
    bindings: list[str]


# -- jobs -----------------------------------------------------------------------------
class NewExport(Request):
    device: Id | None = Field(None, description="absent: every device of the tenant")
    start: BodyTime = Field(alias="from")
    end: BodyTime = Field(alias="to", description="later than from")
    tenant: TenantId | None = None


def _bucket(value: float) -> float:
    """The domain's words for the bucket's bounds (``job_params.parse_report``)."""
    if value < 1:
        raise ValueError("must be at least 1 second")
    if value > job_params.MAX_BUCKET_S:
        raise ValueError(f"must be at most {job_params.MAX_BUCKET_S} seconds (a year)")
    if value != int(value):
        raise ValueError("must be a whole number of seconds")
    return value


class NewReport(NewExport):
    bucket: Annotated[
        float,
        Field(
            allow_inf_nan=False,
            json_schema_extra={"minimum": 1, "maximum": job_params.MAX_BUCKET_S, "multipleOf": 1},
        ),
        AfterValidator(_bucket),
    ] = Field(description="seconds per bucket, a whole number; FAIRWAY_REPORT_MAX_BUCKETS at most")
    z: Annotated[float, Field(ge=job_params.MIN_Z, le=job_params.MAX_Z, allow_inf_nan=False)] = (
        job_params.DEFAULT_Z
    )
    detail: Literal["full", "summary"] = Field(
        "full",
        description="summary: count, min, max, mean from rollups (bucket a multiple of 3600 "
        "with from/to on whole UTC hours, or of 60 on whole minutes)",
    )


class Submitted(Answer):
    job: str
    url: str


class JobsQuery(Query):
    tenant: TenantId | None = None
    limit: PageLimit = 20


class JobSummary(Answer):
    job: str
    kind: Literal["report", "export"]
    tenant: str
    user: str
    created: str | None
    url: str


class Jobs(Answer):
    jobs: list[JobSummary]


class Progress(Answer):
    done: int | None
    total: int | None


class Job(JobSummary):
    params: dict[str, Any]
    state: str = Field(
        description="WAITING (for its tenant's turn), PENDING (queued), STARTED, PROGRESS,"
        " SUCCESS, FAILURE or RETRY"
    )
    ahead: int | None = Field(
        description="while WAITING: how many of its tenant's jobs are released before it"
    )
    progress: Progress | None
    result: dict[str, Any] | None
    error: str | None = Field(description="when FAILURE: why, in words")
    reason: str | None = Field(
        description="when FAILURE: why, as a stable code: time_limit, job_too_large,"
        " bad_parameters, worker_lost, database_unavailable or job_failed"
    )


class Description(Answer):
    """An OpenAPI 3.1 document."""

    model_config = ConfigDict(extra="allow")
    openapi: str
    info: dict[str, Any]
    paths: dict[str, Any]
    components: dict[str, Any]
