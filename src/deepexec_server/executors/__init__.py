"""Executors: what runs each job type (code in a sandbox, text with a model)."""
