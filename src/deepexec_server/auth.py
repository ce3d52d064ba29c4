"""API keys: generation, hashing, lookup, and the local key ``serve`` provisions.

A key is ``dxk_`` + 32 random bytes (base64url). Only its SHA-256 is stored: the keys are
high-entropy, so a fast hash is as good as a slow one and keeps every request cheap.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import time
from pathlib import Path

from deepexec_sdk.config import read_credentials_file, write_credentials_file

from .domain import ApiKey, utcnow
from .errors import Unauthorized
from .store import Store

logger = logging.getLogger("deepexec_server.auth")

KEY_PREFIX = "dxk_"
LOCAL_TENANT = "local"
#: How long a key lookup is remembered. Bounds how long a revoked key keeps working.
CACHE_SECONDS = 2.0


def hash_key(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def generate_key(tenant_id: str, name: str) -> tuple[str, ApiKey]:
    """A new key: the secret (shown once) and what the store keeps."""
    secret = KEY_PREFIX + secrets.token_urlsafe(32)
    key = ApiKey(
        id="key_" + secrets.token_hex(6),
        tenant_id=tenant_id,
        name=name,
        key_hash=hash_key(secret),
        created_at=utcnow(),
    )
    return secret, key


def parse_bearer(header: str | None) -> str | None:
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


class Authenticator:
    """Maps a request's bearer key to its tenant, with a short cache."""

    def __init__(self, store: Store, *, enabled: bool = True) -> None:
        self._store = store
        self.enabled = enabled
        self._cache: dict[str, tuple[float, ApiKey | None]] = {}

    async def tenant_for(self, authorization: str | None) -> str:
        """The tenant of the request's key; raises ``Unauthorized``."""
        tenant_id, _ = await self.identify(authorization)
        return tenant_id

    async def identify(self, authorization: str | None) -> tuple[str, str]:
        """``(tenant_id, key_id)`` of the request's key (``("local", "local")`` with
        authentication off); raises ``Unauthorized``."""
        if not self.enabled:
            return LOCAL_TENANT, LOCAL_TENANT
        secret = parse_bearer(authorization)
        if secret is None:
            raise Unauthorized(
                "an API key is required: send 'Authorization: Bearer <key>'. On the server "
                "machine, `deepexec serve` wrote one to its credentials file; "
                "`deepexec keys create` makes more",
                type="authentication_required",
            )
        key = await self.key_for_digest(hash_key(secret))
        if key is None:
            raise Unauthorized("the API key is unknown or revoked", type="invalid_api_key")
        return key.tenant_id, key.id

    async def tenant_for_digest(self, digest: str) -> str | None:
        """The tenant of the active key whose SHA-256 is ``digest`` (the dashboard's session
        holds that, not the key), or None."""
        key = await self.key_for_digest(digest)
        return key.tenant_id if key is not None else None

    async def key_for_digest(self, digest: str) -> ApiKey | None:
        """The active key whose SHA-256 is ``digest``, or None."""
        now = time.monotonic()
        cached = self._cache.get(digest)
        if cached is not None and now - cached[0] < CACHE_SECONDS:
            key = cached[1]
        else:
            key = await self._store.find_api_key(digest)
            if len(self._cache) > 10_000:
                self._cache.clear()
            self._cache[digest] = (now, key)
        if key is None or not key.active or not hmac.compare_digest(key.key_hash, digest):
            return None
        return key


async def provision_local_key(store: Store, credentials_file: Path, base_url: str) -> str:
    """Make sure the credentials file holds a working key for the ``local`` tenant and this
    server's URL. Keeps a key that still works; creates one otherwise. Returns the key."""
    existing = read_credentials_file(credentials_file).get("api_key")
    if existing:
        key = await store.find_api_key(hash_key(existing))
        if key is not None and key.active:
            write_credentials_file(credentials_file, base_url, existing)
            return existing
    secret, key = generate_key(LOCAL_TENANT, "local (provisioned by deepexec serve)")
    await store.create_api_key(key)
    write_credentials_file(credentials_file, base_url, secret)
    logger.info("created the local API key %s in %s", key.id, credentials_file)
    return secret
