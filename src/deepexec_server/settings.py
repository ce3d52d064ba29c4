"""Server configuration: one immutable object, built once and passed down.

Precedence: explicit arguments (CLI flags) > ``DEEPEXEC_*`` environment variables > defaults.
Nothing here is read at import time.

Over 500 lines, on purpose: every setting, its documentation, its parser (durations, sizes,
rates, pairs) and its check live in this one model, so one file answers "what can I set".
"""

from __future__ import annotations

import ipaddress
import math
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated, Any, ParamSpec, TypeVar

from pydantic import Field, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_core import PydanticCustomError
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from deepexec_sdk.config import credentials_path, default_data_dir

from .errors import DeepExecError

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765


class SettingsError(DeepExecError, ValueError):
    """A configuration value is invalid; the message names the variable."""


#: The limits a code job may set in ``data.limits``; ``Settings.code_limits_*`` use these names.
CODE_LIMIT_NAMES = (
    "cpu_time_s",
    "memory_mb",
    "max_processes",
    "max_output_bytes",
    "max_file_size_mb",
    "disk_mb",
)


def parse_pairs(raw: str, allowed: tuple[str, ...] | None = None) -> dict[str, int]:
    """``'name=N,name=N'`` with N >= 1 (and, if given, names from ``allowed``); raise
    ``ValueError`` saying what is wrong."""
    out: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in raw.split(","))):
        name, sep, value = part.partition("=")
        if not sep or not value.strip().isdigit() or int(value) < 1:
            raise ValueError(f"expected 'name=N,...' with N >= 1, got {part!r}")
        if allowed is not None and name.strip() not in allowed:
            raise ValueError(f"unknown name {name.strip()!r}; allowed: {', '.join(allowed)}")
        out[name.strip()] = int(value)
    return out


DAY = 86400.0
GIB = 1024**3
_DURATION_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": DAY, "w": 7 * DAY}
_BYTE_UNITS = {
    "": 1,
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": GIB,
    "tib": 1024**4,
}


def parse_duration(raw: str) -> float:
    """Seconds from ``30s``, ``15m``, ``12h``, ``7d``, ``2w`` or a plain number of seconds;
    ``0`` and ``never`` are 0 (no limit). Raise ``ValueError`` saying what is wrong."""
    text = raw.strip().lower()
    if text in ("never", "forever"):
        return 0.0
    unit = text[-1:] if text[-1:] in _DURATION_UNITS else ""
    try:
        value = float(text[: len(text) - len(unit)])
    except ValueError:
        value = -1.0
    if not (value >= 0 and math.isfinite(value)):
        raise ValueError(
            "expected a duration such as 7d, 12h, 30m, 45s, or 0 / never "
            f"(keep forever), got {raw!r}"
        )
    return value * _DURATION_UNITS.get(unit, 1.0)


_RATE_UNITS = {
    "": 1.0,
    "s": 1.0,
    "sec": 1.0,
    "second": 1.0,
    "m": 1 / 60,
    "min": 1 / 60,
    "minute": 1 / 60,
    "h": 1 / 3600,
    "hour": 1 / 3600,
}


def parse_rate(raw: str) -> float:
    """Events per second from ``50/s``, ``3000/min``, ``100/h`` or a plain number per second;
    ``0`` is 0 (no cap). Raise ``ValueError`` saying what is wrong."""
    text = raw.strip().lower().replace(" ", "")
    count, _, unit = text.partition("/")
    try:
        value = float(count)
    except ValueError:
        value = -1.0
    if unit not in _RATE_UNITS or not (value >= 0 and math.isfinite(value)):
        raise ValueError(f"expected a rate such as 50/s, 3000/min or 0 (no cap), got {raw!r}")
    return value * _RATE_UNITS[unit]


def parse_bytes(raw: str) -> int:
    """Bytes from ``1048576``, ``500MiB``, ``4GiB``, ``2GB``...; ``0`` is 0 (no cap). Raise
    ``ValueError`` saying what is wrong."""
    text = raw.strip().lower().replace(" ", "")
    digits = text.rstrip("abcdefghijklmnopqrstuvwxyz")
    unit = text[len(digits) :]
    try:
        value = float(digits)
    except ValueError:
        value = -1.0
    if unit not in _BYTE_UNITS or not (value >= 0 and math.isfinite(value)):
        raise ValueError(
            "expected a size such as 4GiB, 500MiB, 2GB or a number of bytes "
            f"(0: no cap), got {raw!r}"
        )
    return int(value * _BYTE_UNITS[unit])


def _network(raw: str) -> str:
    """A CIDR (``10.0.0.0/8``, ``::1/128``) or one address, normalised; ``ValueError`` if not."""
    try:
        return str(ipaddress.ip_network(raw.strip(), strict=False))
    except ValueError:
        raise ValueError(
            f"expected a network such as 10.0.0.0/8 or 127.0.0.1, got {raw!r}"
        ) from None


def _parse_concurrency(raw: str) -> dict[str, int]:
    """``--concurrency``'s ``'job_type=N,...'``; raise ``SettingsError``."""
    try:
        return parse_pairs(raw)
    except ValueError as exc:
        raise SettingsError(f"DEEPEXEC_CONCURRENCY: {exc}") from None


#: A ``name=N`` map: a mapping when given in Python, ``'name=N,name=N'`` in a variable (the
#: text reaches the field's validator as is, not decoded as JSON).
Pairs = Annotated[Mapping[str, int], NoDecode]

_P = ParamSpec("_P")
_T = TypeVar("_T")


def _invalid_as_error(parse: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs) -> _T:
    """``parse(...)``, its ``ValueError`` turned into a validation error with its text alone."""
    try:
        return parse(*args, **kwargs)
    except ValueError as exc:
        raise PydanticCustomError("invalid_setting", "{reason}", {"reason": str(exc)}) from None


class _Variables(PydanticBaseSettingsSource):
    """The ``DEEPEXEC_<NAME>`` variables of ``env`` that are set and not empty, as text for
    the fields' validators."""

    def __init__(self, settings_cls: type[BaseSettings], env: Mapping[str, str]) -> None:
        super().__init__(settings_cls)
        self.env = env

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        raw = self.env.get(variable(field_name))
        return (raw or None), field_name, False

    def __call__(self) -> dict[str, Any]:
        values = {}
        for name, field in self.settings_cls.model_fields.items():
            raw, _, _ = self.get_field_value(field, name)
            if raw is not None:
                values[name] = raw
        return values


def variable(field_name: str) -> str:
    """The environment variable that sets a field."""
    return f"DEEPEXEC_{field_name.upper()}"


def _describe(exc: ValidationError, from_variables: set[str]) -> str:
    """The first problem of ``exc``: ``<variable or setting>: <what is wrong> (got ...)``."""
    err = exc.errors(include_url=False)[0]
    loc = err["loc"]
    if not loc:
        return str(err["msg"])
    name = str(loc[0])
    where = variable(name) if name in from_variables else name
    got = f", got {err['input']!r}" if err["type"] not in ("invalid_setting",) else ""
    return f"{where}: {err['msg']}{got}"


class Settings(BaseSettings):
    """Every setting of the server; immutable. A variable ``DEEPEXEC_<NAME>`` sets ``<name>``
    (``from_env``)."""

    model_config = SettingsConfigDict(frozen=True, extra="forbid")

    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    #: ``sqlite:///path/to/file.db`` or ``postgresql://...``. Empty: SQLite in ``data_dir``.
    database_url: str = ""
    data_dir: Path = Field(default_factory=default_data_dir)
    #: Where ``serve`` writes the local API key and URL for the SDK and CLI (mode 0600).
    credentials_file: Path = Field(default_factory=credentials_path)
    #: Require an API key on every /v1 request.
    auth_enabled: bool = True

    default_timeout: int = 60
    max_timeout: int = 3600
    #: Longest ``?wait=`` a client may ask for on GET /v1/jobs/{id}.
    max_wait_seconds: float = 60.0
    #: How long POST .../cancel waits for a running job to stop before answering.
    cancel_wait_seconds: float = 2.0
    max_body_bytes: int = 2 * 1024 * 1024
    #: The cap on the body of a batch submit (``POST /v1/jobs/batch``, up to 1,000 jobs).
    max_batch_body_bytes: int = 32 * 1024 * 1024
    #: Runner slots per job type on this server.
    concurrency: Pairs = Field(default_factory=lambda: {"code_execution": 2, "text_generation": 1})
    #: A running job's lease; renewed every third of it. A runner silent this long is dead.
    lease_seconds: float = 15.0
    #: Most progress events per second a job sends its listeners (and writes to the store);
    #: what a program reports faster is coalesced, the latest value winning.
    progress_events_per_second: float = 10.0
    #: Most output events per second a job sends its listeners; chunks in between are merged.
    output_events_per_second: float = 20.0
    #: Most listeners (long-polls and event streams) one job may have at a time; 0: no cap.
    max_subscribers_per_job: int = 500
    #: Most listeners one tenant may have open at a time, over all its jobs; 0: no cap.
    max_subscribers_per_tenant: int = 2000
    #: Seconds a finished job keeps its result (and its input data, if large) before it is
    #: purged; the job itself stays, marked ``result_purged_at``. 0: forever.
    #: ``DEEPEXEC_RESULT_RETENTION`` takes a duration: ``7d``, ``12h``, ``30m``, ``0``, ``never``.
    result_retention: float = 7 * DAY
    #: Most bytes of results one tenant keeps; past it, its oldest results are purged first.
    #: 0: no cap. ``DEEPEXEC_TENANT_RESULT_BYTES`` takes bytes, or ``4GiB``, ``500MiB``...
    tenant_result_bytes: int = 4 * GIB
    #: How often a server that runs jobs purges what is past the retention or the cap.
    purge_interval_seconds: float = 60.0

    # --- tenants: fair share, quotas, back-pressure (``deepexec tenants set`` per tenant) -----
    #: Most jobs one tenant may have running at once (over every server); 0: no cap. Jobs past
    #: it wait in the queue.
    tenant_max_running: int = 0
    #: Most jobs one tenant may have queued; one more is a 429 ``quota_exceeded``. 0: no cap.
    tenant_max_pending: int = 10_000
    #: Most submits per second one tenant may make to one server (a token bucket that holds
    #: a second's worth); past it, 429 with Retry-After. ``50/s``, ``3000/min``; 0: no cap.
    tenant_submit_rate: float = 0.0
    #: The longest timeout a tenant's job may ask for; 0: ``max_timeout``.
    tenant_max_timeout: int = 0
    #: Most jobs queued on the whole server, all tenants together; past it every submit is a
    #: 503 ``queue_full`` with Retry-After, and /readyz says so. 0: no cap.
    max_pending_jobs: int = 100_000

    # --- webhooks (see webhooks/) -------------------------------------------------------------
    #: A delivery's first attempt is made as the job ends; after a failed attempt, the next
    #: waits the schedule's next entry (jittered by up to a tenth); past the last, the delivery
    #: is given up. ``DEEPEXEC_WEBHOOK_RETRY_SCHEDULE`` takes durations:
    #: ``5s,5m,30m,2h,5h,10h,14h,20h,24h`` (Standard Webhooks' schedule, about 3 days, the
    #: default); ``none``: one attempt only.
    webhook_retry_schedule: Annotated[tuple[float, ...], NoDecode] = (
        5.0,
        300.0,
        1800.0,
        7200.0,
        18000.0,
        36000.0,
        50400.0,
        72000.0,
        86400.0,
    )
    #: Seconds an attempt may take (connect, send, answer); longer is a failed attempt.
    webhook_timeout_seconds: float = 15.0
    #: Networks a webhook may reach although they are not public (loopback, private,
    #: link-local, metadata...), as CIDRs: ``127.0.0.1/32,10.0.0.0/8``. Empty: public only.
    webhook_allow_networks: Annotated[tuple[str, ...], NoDecode] = ()
    #: How long a rotated webhook key keeps signing beside the new one.
    webhook_secret_overlap_seconds: float = DAY
    #: Deliveries one server sends at a time.
    webhook_concurrency: int = 16

    # --- connections (see api/connections.py) -------------------------------------------------
    #: A request's head must arrive within this many seconds of the connection or of its
    #: first byte; else 408 and the connection is closed.
    header_timeout_seconds: float = 10.0
    #: A request's body must arrive within this many seconds of its head; else closed.
    body_timeout_seconds: float = 60.0
    #: An idle connection between requests is closed after this many seconds.
    keep_alive_seconds: int = 5
    #: Open client connections at most; one more is answered 503 with Retry-After. Lowered at
    #: start to fit below the open-file limit (raised to its hard limit first).
    max_connections: int = 4096

    # --- MCP over HTTP (/mcp) ----------------------------------------------------------------
    #: Live MCP sessions one API key may hold; opening one more is a 429.
    mcp_sessions_per_key: int = 64
    #: An MCP session with no request in flight for this long is closed.
    mcp_session_idle_seconds: float = 1800.0

    # --- sandbox (code_execution) ------------------------------------------------------------
    #: Host directory holding per-job work dirs. Empty: chosen by the sandbox.
    work_dir: str = ""
    #: Name of the unprivileged user sandboxed programs run as (created by set-up); falls back
    #: to ``nobody`` when missing.
    sandbox_user: str = "deepexec-sandbox"
    #: Runs untrusted code WITHOUT namespaces if bubblewrap cannot work. Never on by default.
    unsafe_no_sandbox: bool = False
    allow_network: bool = False
    #: A code job's default ``max_output_bytes`` (bytes kept per stream).
    max_output_bytes: int = 1024 * 1024
    #: Defaults for a code job's other ``data.limits``. Without ``cpu_time_s`` a job's CPU
    #: time is capped just above its wall-clock timeout.
    code_limits_default: Pairs = Field(
        default_factory=lambda: {
            "memory_mb": 512,
            "max_processes": 128,
            "max_file_size_mb": 64,
            "disk_mb": 256,
        }
    )
    #: The most a code job may ask for, per limit; more is a 422 naming the limit.
    code_limits_max: Pairs = Field(
        default_factory=lambda: {
            "cpu_time_s": 3600,
            "memory_mb": 8192,
            "max_processes": 1024,
            "max_output_bytes": 16 * 1024 * 1024,
            "max_file_size_mb": 1024,
            "disk_mb": 1024,
        }
    )

    # --- dashboard ---------------------------------------------------------------------------
    #: Signs the dashboard's session cookies. Empty: a random secret kept in ``data_dir``
    #: (shared by the processes of one machine); set it when processes on several machines
    #: serve the dashboard.
    ui_secret: str = ""

    # --- other services' APIs ----------------------------------------------------------------
    #: Tenant of Piston API requests that carry no API key (Piston has no keys, and some of
    #: its clients cannot send one). Empty: the Piston API requires a key like /v1.
    piston_tenant: str = ""
    #: The same for the Judge0 API (``X-Auth-Token`` carries the key; Judge0 has none by
    #: default).
    judge0_tenant: str = ""

    # --- text_generation ---------------------------------------------------------------------
    #: Model used when a job names none.
    default_model: str = "smollm2-135m-instruct"
    llm_threads: int = 2
    llm_parallel: int = 2
    #: Optional TOML/JSON model catalog file.
    models_file: str = ""

    @property
    def effective_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'deepexec.db'}"

    @property
    def base_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """``Settings(...)`` is the defaults and what it is given, nothing else: the
        environment is read by ``from_env`` alone, from the mapping it is given."""
        return (init_settings,)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Build settings from ``DEEPEXEC_*`` variables, then apply non-None ``overrides``.
        Raise ``SettingsError`` naming the variable (or the setting) and what is wrong."""
        from_vars = _Variables(cls, os.environ if env is None else env)()
        given = {k: v for k, v in overrides.items() if v is not None}
        try:
            return cls(**{**from_vars, **given})
        except ValidationError as exc:
            raise SettingsError(_describe(exc, set(from_vars) - set(given))) from None

    # --- the parsers of the variables' text, as validators --------------------------------

    @field_validator("concurrency", "code_limits_default", "code_limits_max", mode="before")
    @classmethod
    def _name_equals_n(cls, value: Any, info: ValidationInfo) -> Any:
        """``'name=N,name=N'`` from a variable, merged over the default."""
        if not isinstance(value, str):
            return value
        name = info.field_name
        assert name is not None
        allowed = None if name == "concurrency" else CODE_LIMIT_NAMES
        default = cls.model_fields[name].get_default(call_default_factory=True)
        return {**default, **_invalid_as_error(parse_pairs, value, allowed)}

    @field_validator("result_retention", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> Any:
        return _invalid_as_error(parse_duration, value) if isinstance(value, str) else value

    @field_validator("tenant_submit_rate", mode="before")
    @classmethod
    def _rate(cls, value: Any) -> Any:
        return _invalid_as_error(parse_rate, value) if isinstance(value, str) else value

    @field_validator("webhook_retry_schedule", mode="before")
    @classmethod
    def _durations(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        if value.strip().lower() == "none":
            return ()
        return tuple(_invalid_as_error(parse_duration, p) for p in value.split(",") if p.strip())

    @field_validator("webhook_allow_networks", mode="before")
    @classmethod
    def _networks(cls, value: Any) -> Any:
        parts = value.split(",") if isinstance(value, str) else value
        return tuple(_invalid_as_error(_network, str(p)) for p in parts if str(p).strip())

    @field_validator("tenant_result_bytes", mode="before")
    @classmethod
    def _size(cls, value: Any) -> Any:
        return _invalid_as_error(parse_bytes, value) if isinstance(value, str) else value

    @field_validator("data_dir", "credentials_file", mode="before")
    @classmethod
    def _home(cls, value: Any) -> Any:
        return Path(value).expanduser() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        try:
            self.check()
        except SettingsError as exc:
            raise PydanticCustomError(
                "invalid_settings", "{reason}", {"reason": str(exc)}
            ) from None
        return self

    def check(self) -> None:
        """Raise ``SettingsError`` naming the first invalid value."""
        if not 0 <= self.port <= 65535:
            raise SettingsError(f"port must be 0-65535, got {self.port}")
        if not 1 <= self.default_timeout <= self.max_timeout:
            raise SettingsError(
                f"default_timeout ({self.default_timeout}) must be between 1 and max_timeout "
                f"({self.max_timeout})"
            )
        if self.lease_seconds < 1:
            raise SettingsError(f"lease_seconds must be >= 1, got {self.lease_seconds}")
        for name in ("header_timeout_seconds", "body_timeout_seconds"):
            value = getattr(self, name)
            if not 0 < value < float("inf"):
                raise SettingsError(f"{name} must be a positive number of seconds, got {value}")
        if self.keep_alive_seconds < 1:
            raise SettingsError(f"keep_alive_seconds must be >= 1, got {self.keep_alive_seconds}")
        if self.max_connections < 1:
            raise SettingsError(f"max_connections must be >= 1, got {self.max_connections}")
        if self.mcp_sessions_per_key < 1:
            raise SettingsError(
                f"mcp_sessions_per_key must be >= 1, got {self.mcp_sessions_per_key}"
            )
        if not 0 < self.mcp_session_idle_seconds < float("inf"):
            raise SettingsError(
                "mcp_session_idle_seconds must be a positive number, got "
                f"{self.mcp_session_idle_seconds}"
            )
        for name in ("progress_events_per_second", "output_events_per_second"):
            rate = getattr(self, name)
            if not 0.1 <= rate <= 1000:
                raise SettingsError(f"{name} must be between 0.1 and 1000, got {rate}")
        for name in ("max_subscribers_per_job", "max_subscribers_per_tenant"):
            if getattr(self, name) < 0:
                raise SettingsError(f"{name} must be >= 0 (0: no cap), got {getattr(self, name)}")
        if self.result_retention < 0:
            raise SettingsError(
                f"result_retention must be >= 0 (0: forever), got {self.result_retention}"
            )
        if self.tenant_result_bytes < 0:
            raise SettingsError(
                f"tenant_result_bytes must be >= 0 (0: no cap), got {self.tenant_result_bytes}"
            )
        for name in (
            "tenant_max_running",
            "tenant_max_pending",
            "tenant_max_timeout",
            "max_pending_jobs",
        ):
            if getattr(self, name) < 0:
                raise SettingsError(f"{name} must be >= 0 (0: no cap), got {getattr(self, name)}")
        if not 0 <= self.tenant_submit_rate < float("inf"):
            raise SettingsError(
                f"tenant_submit_rate must be >= 0 (0: no cap), got {self.tenant_submit_rate}"
            )
        if self.purge_interval_seconds <= 0:
            raise SettingsError(
                f"purge_interval_seconds must be > 0, got {self.purge_interval_seconds}"
            )
        if any(not 0 <= wait < float("inf") for wait in self.webhook_retry_schedule):
            raise SettingsError(
                f"webhook_retry_schedule must be durations >= 0, got {self.webhook_retry_schedule}"
            )
        if not 0 < self.webhook_timeout_seconds <= 300:
            raise SettingsError(
                f"webhook_timeout_seconds must be in (0, 300], got {self.webhook_timeout_seconds}"
            )
        if self.webhook_concurrency < 1:
            raise SettingsError(f"webhook_concurrency must be >= 1, got {self.webhook_concurrency}")
        for name in ("max_body_bytes", "max_batch_body_bytes"):
            if getattr(self, name) < 1024:
                raise SettingsError(f"{name} must be >= 1024, got {getattr(self, name)}")
        for job_type, n in self.concurrency.items():
            if n < 1:
                raise SettingsError(f"concurrency for {job_type} must be >= 1, got {n}")
        self._check_code_limits()
        url = self.effective_database_url
        if not url.startswith(("sqlite:///", "postgresql://", "postgres://")):
            raise SettingsError(
                f"database_url must start with sqlite:/// or postgresql://, got {url!r}"
            )

    def _check_code_limits(self) -> None:
        for field in ("code_limits_default", "code_limits_max"):
            for name, value in getattr(self, field).items():
                if name not in CODE_LIMIT_NAMES:
                    raise SettingsError(
                        f"{field}: unknown limit {name!r}; allowed: {', '.join(CODE_LIMIT_NAMES)}"
                    )
                if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                    raise SettingsError(
                        f"{field}: {name} must be a positive integer, got {value!r}"
                    )
        if "max_output_bytes" in self.code_limits_default:
            raise SettingsError(
                "code_limits_default: set the default max_output_bytes with max_output_bytes"
            )
        missing = [n for n in CODE_LIMIT_NAMES if n not in self.code_limits_max]
        if missing:
            raise SettingsError(f"code_limits_max: no maximum for {', '.join(missing)}")
        defaults = {**self.code_limits_default, "max_output_bytes": self.max_output_bytes}
        for name, value in defaults.items():
            if value > self.code_limits_max[name]:
                raise SettingsError(
                    f"the default {name} ({value}) is above its maximum "
                    f"({self.code_limits_max[name]}, code_limits_max)"
                )
