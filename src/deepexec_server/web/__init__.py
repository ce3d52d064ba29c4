"""What every HTTP door (``api/``, ``mcp/``, ``ui/``, ``compat/``) shares, below all of them:
the ASGI helpers (``asgi.py``), the one builder of the JSON error envelope (``envelope.py``),
the services object handlers reach (``services.py``) and the cache of terminal statuses
(``status_cache.py``). Nothing here imports a door."""
