"""What request handlers reach: built once by ``create_app``."""

from __future__ import annotations

import dataclasses

from ..auth import Authenticator
from ..engine import Engine
from ..metrics import Metrics
from ..settings import Settings
from ..store import Store
from .status_cache import TerminalCache


@dataclasses.dataclass(frozen=True)
class Services:
    settings: Settings
    store: Store
    engine: Engine
    auth: Authenticator
    metrics: Metrics
    #: The JSON of terminal jobs, for status reads (``api/jobs.py``).
    status_cache: TerminalCache = dataclasses.field(default_factory=TerminalCache)
