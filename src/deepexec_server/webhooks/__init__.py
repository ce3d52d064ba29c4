"""Webhooks: a job's end, signed (Standard Webhooks) and sent to the job's own URL and to its
tenant's endpoints, from a durable outbox in the store (docs/api.md, "Webhooks").

- ``guard``: what a webhook may reach (the SSRF guard);
- ``messages``: the bodies and the signed headers;
- ``sender``: the loop that tries every due delivery, with retries.
"""
