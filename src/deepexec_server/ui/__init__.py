"""The web dashboard served at ``/ui`` by ``deepexec serve``: jobs live, a job's output as it
is written, cancel, submit. Server-rendered pages with htmx; every asset is served by the
server itself (``scripts/setup-ui-assets.sh`` brings the pinned libraries from npm)."""

from .pages import install
from .session import Sessions, load_secret

__all__ = ["Sessions", "install", "load_secret"]
