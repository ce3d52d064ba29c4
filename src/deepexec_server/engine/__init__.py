"""The job engine."""

from .engine import Engine
from .hub import EventHub

__all__ = ["Engine", "EventHub"]
