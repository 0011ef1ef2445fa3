"""The one failure every shared-state backend may raise: it cannot be reached right now."""

from __future__ import annotations


class StateUnavailable(Exception):
    """The backend cannot be reached right now (Redis down or slow). Callers fall back."""
