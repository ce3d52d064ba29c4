"""``deepexec tenants``: an operator's weights and quotas per tenant, on the server's database
(as ``deepexec keys``). Every server sharing the database applies a change within seconds
(``engine.quotas.SETTINGS_TTL_S``); a tenant cannot change its own."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..domain import Tenant, TenantUsage, utcnow
from ..engine.quotas import Limits, effective_limits
from ..settings import CODE_LIMIT_NAMES, Settings, parse_pairs, parse_rate
from ..store import open_store
from .common import CliError, server_opts, settings_from_args
from .render import table

if TYPE_CHECKING:
    from .common import Subparsers

#: How a quota's value is written on the command line: a number, ``0``/``none`` (no limit)
#: or ``default`` (the server-wide setting again).
_RESET = "default"
_NO_LIMIT = ("0", "none", "unlimited")


def _count(raw: str) -> int | None:
    text = raw.strip().lower()
    if text == _RESET:
        return None
    if text in _NO_LIMIT:
        return 0
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(
            f"expected a whole number, 0 or none (no limit), or default, got {raw!r}"
        )
    return value


def _weight(raw: str) -> float | None:
    if raw.strip().lower() == _RESET:
        return None
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"expected a positive number or default, got {raw!r}")
    return value


def _rate(raw: str) -> float | None:
    text = raw.strip().lower()
    if text == _RESET:
        return None
    if text in ("none", "unlimited"):
        return 0.0
    try:
        return parse_rate(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _pairs(allowed: tuple[str, ...] | None) -> Callable[[str], dict[str, int] | None]:
    def parse(raw: str) -> dict[str, int] | None:
        if raw.strip().lower() == _RESET:
            return None
        try:
            return parse_pairs(raw, allowed)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return parse


#: ``tenants set``'s options: (flag, Tenant field, parser, help).
_OPTIONS: tuple[tuple[str, str, Callable[[str], Any], str], ...] = (
    ("--weight", "weight", _weight, "share of the slots against other tenants' (default 1)"),
    ("--max-running", "max_running", _count, "jobs running at once, over every server"),
    ("--max-pending", "max_pending", _count, "jobs queued; one more is a 429"),
    ("--submit-rate", "submit_rate", _rate, "submits per second per server: 50/s, 3000/min"),
    ("--max-timeout", "max_timeout", _count, "longest timeout a job may ask for, in seconds"),
    (
        "--max-running-type",
        "max_running_by_type",
        _pairs(None),
        "running jobs per job type: text_generation=1,code_execution=4",
    ),
    (
        "--code-limits",
        "code_limits",
        _pairs(CODE_LIMIT_NAMES),
        "most a code job may ask for: memory_mb=1024,disk_mb=256 (defaults lowered to it)",
    ),
)


_UNITS = {"submit_rate": "/s", "max_timeout": " s"}
#: The settings that are maps (per job type, per code limit): the tenant's own, or none.
_MAPS = ("max_running_by_type", "code_limits")


def _quota(field: str, limits: Limits, own: Tenant) -> str:
    """A limit as shown: ``none`` for no limit, ``(default)`` when it is the server's."""
    if field in _MAPS:
        held = getattr(own, field)
        return ",".join(f"{k}={v}" for k, v in held.items()) if held else "none"
    value = getattr(limits, field)
    shown = "none" if not value else f"{value:g}{_UNITS.get(field, '')}"
    return shown if getattr(own, field) is not None else f"{shown} (default)"


def _row(tenant_id: str, own: Tenant | None, limits: Limits, used: TenantUsage | None) -> list[str]:
    o = own or Tenant(tenant_id, utcnow(), utcnow())
    return [
        tenant_id,
        _quota("weight", limits, o),
        str(used.running if used else 0),
        _quota("max_running", limits, o),
        str(used.pending if used else 0),
        _quota("max_pending", limits, o),
        _quota("submit_rate", limits, o),
        _quota("max_timeout", limits, o),
        _quota("max_running_by_type", limits, o),
        _quota("code_limits", limits, o),
    ]


async def _run(args: argparse.Namespace, settings: Settings) -> int:
    store = open_store(settings.effective_database_url)
    await store.open()
    try:
        action = args.tenants_command
        if action == "list":
            tenants = {t.tenant_id: t for t in await store.list_tenants()}
            usage = await store.tenant_usage()
            rows = [
                _row(
                    tid,
                    tenants.get(tid),
                    effective_limits(settings, tenants.get(tid)),
                    usage.get(tid),
                )
                for tid in sorted({*tenants, *usage})
            ]
            table(
                [
                    "TENANT",
                    "WEIGHT",
                    "RUNNING",
                    "MAX RUNNING",
                    "PENDING",
                    "MAX PENDING",
                    "SUBMIT RATE",
                    "MAX TIMEOUT",
                    "BY TYPE",
                    "CODE LIMITS",
                ],
                rows,
            )
            return 0
        if action == "reset":
            if not await store.delete_tenant(args.tenant):
                raise CliError(f"tenant {args.tenant!r} has no settings of its own")
            print(f"tenant {args.tenant!r} takes the server's defaults again")
            return 0
        changes = {
            field: getattr(args, field)
            for _, field, _, _ in _OPTIONS
            if getattr(args, field) is not _UNSET
        }
        if not changes:
            raise CliError(
                "nothing to set: give at least one of " + ", ".join(flag for flag, *_ in _OPTIONS)
            )
        now = utcnow()
        was = await store.get_tenant(args.tenant) or Tenant(args.tenant, now, now)
        saved = await store.save_tenant(dataclasses.replace(was, updated_at=now, **changes))
        limits = effective_limits(settings, saved)
        print(
            f"tenant {saved.tenant_id!r}: "
            + ", ".join(f"{field} {_quota(field, limits, saved)}" for _, field, _, _ in _OPTIONS)
        )
        return 0
    finally:
        await store.close()


_UNSET = object()


def cmd_tenants(args: argparse.Namespace) -> int:
    return asyncio.run(_run(args, settings_from_args(args)))


def add_parsers(sub: Subparsers) -> None:
    p = sub.add_parser(
        "tenants", help="tenants' weights and quotas, and what they run (on the server's database)"
    )
    server_opts(p)
    ts = p.add_subparsers(dest="tenants_command", required=True, metavar="ACTION")
    s = ts.add_parser(
        "set",
        help="set a tenant's weight and quotas (0 or none: no limit; default: the server's)",
    )
    s.add_argument("tenant")
    for flag, field, parse, helptext in _OPTIONS:
        s.add_argument(flag, dest=field, type=parse, default=_UNSET, help=helptext)
    ts.add_parser("list", help="every tenant's quotas beside what it has queued and running")
    r = ts.add_parser("reset", help="forget a tenant's settings: it takes the defaults again")
    r.add_argument("tenant")
    p.set_defaults(func=cmd_tenants)
