"""``deepexec webhooks``: a tenant's webhook endpoints, the key of its jobs' own URLs, and a
job's delivery log, through the SDK."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from deepexec_sdk.types import WebhookEndpointResponse

from .client import _client
from .common import client_opts
from .render import table

if TYPE_CHECKING:
    from .common import Subparsers

EVENTS = ("job.completed", "job.failed", "job.canceled")


def _show(endpoint: WebhookEndpointResponse) -> None:
    print(endpoint.model_dump_json(indent=2, exclude_none=True))


def cmd_webhooks(args: argparse.Namespace) -> int:
    action = args.webhooks_command
    with _client(args) as c:
        if action == "add":
            _show(c.create_webhook(args.webhook_url, args.event or None))
        elif action == "show":
            _show(c.get_webhook(args.endpoint_id))
        elif action == "rotate":
            _show(c.rotate_webhook_secret(args.endpoint_id))
        elif action == "enable":
            _show(c.update_webhook(args.endpoint_id, enabled=True))
        elif action == "delete":
            c.delete_webhook(args.endpoint_id)
            print(f"deleted {args.endpoint_id}")
        elif action == "list":
            listing = c.list_webhooks()
            if args.json:
                print(listing.model_dump_json(indent=2))
                return 0
            rows = [
                [
                    e.id,
                    e.url or "",
                    ",".join(e.events) if e.events else "all",
                    "yes" if e.enabled else f"no ({e.disabled_reason})",
                ]
                for e in listing.endpoints
            ]
            table(["ID", "URL", "EVENTS", "ENABLED"], rows)
        else:  # log
            log = c.get_mcp_job_webhooks(args.job_id)
            if args.json:
                print(log.model_dump_json(indent=2))
                return 0
            rows = [
                [
                    d.id,
                    d.url,
                    d.state,
                    " ".join(str(a.status_code or a.error) for a in d.attempts) or "-",
                    d.next_attempt_at.isoformat(timespec="seconds") if d.next_attempt_at else "",
                ]
                for d in log.deliveries
            ]
            table(["DELIVERY", "URL", "STATE", "ATTEMPTS", "NEXT"], rows)
    return 0


def add_parsers(sub: Subparsers) -> None:
    p = sub.add_parser("webhooks", help="manage webhook endpoints; show a job's deliveries")
    ws = p.add_subparsers(dest="webhooks_command", required=True, metavar="ACTION")
    w = ws.add_parser("add", help="send every job's end (of --event types) to URL")
    w.add_argument("webhook_url", metavar="URL")
    w.add_argument("--event", action="append", choices=EVENTS, help="only these (repeatable)")
    client_opts(w)
    w = ws.add_parser("list", help="list the endpoints")
    w.add_argument("--json", action="store_true")
    client_opts(w)
    for action, text in (
        ("show", "show an endpoint and its key (job-urls: the key of jobs' own URLs)"),
        ("rotate", "give an endpoint a new key (the old one signs too for a day)"),
        ("enable", "re-enable an endpoint a 410 disabled"),
        ("delete", "delete an endpoint"),
    ):
        w = ws.add_parser(action, help=text)
        w.add_argument("endpoint_id", metavar="ID")
        client_opts(w)
    w = ws.add_parser("log", help="a job's webhook deliveries and their attempts")
    w.add_argument("job_id")
    w.add_argument("--json", action="store_true")
    client_opts(w)
    p.set_defaults(func=cmd_webhooks)
