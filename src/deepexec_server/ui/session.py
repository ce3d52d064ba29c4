"""The dashboard's sign-in session: a signed cookie naming the API key it was opened with.

The cookie holds the SHA-256 of the key (never the key) and when it was issued, signed with
the server's dashboard secret (``itsdangerous``). Every request checks the signature, the age,
and that the key is still active, so revoking a key ends its sessions. The cookie is HttpOnly,
``SameSite=Strict``, and ``Secure`` when the server is reached over https.

State-changing requests carry a token derived from the session (a hidden form field, or the
``X-CSRF-Token`` header for htmx requests) and, when the browser sends one, an ``Origin`` equal
to the server's own: a form posted from another site is refused even by a browser that would
send the cookie.

The secret is ``DEEPEXEC_UI_SECRET`` when set (processes on several machines must share it),
else a random one kept in the data dir (file mode 0600), shared by the processes of one machine.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import secrets
from pathlib import Path

from itsdangerous import BadSignature, URLSafeTimedSerializer

COOKIE = "deepexec_session"
#: How long a session lasts after sign-in.
MAX_AGE_S = 12 * 3600
CSRF_HEADER = "x-csrf-token"
CSRF_FIELD = "csrf"
SECRET_FILE = "ui-secret"  # noqa: S105 (a file name)


def load_secret(configured: str, data_dir: Path) -> str:
    """The configured secret, or this machine's (created on first use, mode 0600)."""
    if configured:
        return configured
    path = data_dir / SECRET_FILE
    with contextlib.suppress(FileNotFoundError):
        existing = path.read_text().strip()
        if existing:
            return existing
    data_dir.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, secret.encode())
    except BaseException:
        os.close(fd)
        raise
    os.close(fd)
    return secret


class Sessions:
    """Issues and reads session cookies and their cross-site request tokens."""

    def __init__(self, secret: str) -> None:
        self._signer = URLSafeTimedSerializer(secret, salt="deepexec-ui-session")
        self._csrf_key = hashlib.sha256(b"deepexec-ui-csrf\0" + secret.encode()).digest()

    def issue(self, key_hash: str) -> str:
        """The cookie value for a session opened with the key whose hash is ``key_hash``."""
        return self._signer.dumps({"k": key_hash, "n": secrets.token_hex(8)})

    def key_hash(self, cookie: str | None) -> str | None:
        """The key hash of a valid, unexpired session cookie, or None."""
        if not cookie:
            return None
        try:
            data = self._signer.loads(cookie, max_age=MAX_AGE_S)
        except BadSignature:
            return None
        value = data.get("k") if isinstance(data, dict) else None
        return value if isinstance(value, str) else None

    def csrf_token(self, cookie: str) -> str:
        """The token state-changing requests of this session must carry."""
        return hmac.new(self._csrf_key, cookie.encode(), hashlib.sha256).hexdigest()

    def csrf_ok(self, cookie: str, token: str | None) -> bool:
        return token is not None and hmac.compare_digest(self.csrf_token(cookie), token)


def same_origin(origin: str | None, host: str | None, scheme: str) -> bool:
    """Whether a request's ``Origin`` (when the browser sent one) is this server."""
    if origin is None:
        return True  # not sent: SameSite=Strict and the token still apply
    return host is not None and origin == f"{scheme}://{host}"
