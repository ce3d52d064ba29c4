"""Who sandboxed programs run as on the host (see docs/sandbox.md, "The layers")."""

from __future__ import annotations

import dataclasses
import os
import pwd


@dataclasses.dataclass(frozen=True, slots=True)
class RunAs:
    """The unprivileged host identity sandboxed programs run as (only when the server is root)."""

    name: str
    uid: int
    gid: int


def resolve_run_as(user_name: str, server_uid: int | None = None) -> RunAs | None:
    """Who jobs run as: ``user_name`` if it exists, else ``nobody``; None if the server is not
    root (then jobs run as the server's own uid inside a user namespace).

    Raises ``LookupError`` if the server is root and neither user exists: root must never run
    untrusted code as itself.
    """
    uid = os.geteuid() if server_uid is None else server_uid
    if uid != 0:
        return None
    for name in (user_name, "nobody"):
        if not name:
            continue
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            continue
        if entry.pw_uid == 0:
            continue
        return RunAs(name, entry.pw_uid, entry.pw_gid)
    raise LookupError(f"neither user {user_name!r} nor 'nobody' exists")
