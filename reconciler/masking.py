"""Masking of customer ids for every default output (plans, logs, errors)."""

from __future__ import annotations


def mask(user_id: str) -> str:
    """Return ``user_id`` with most of its personal part hidden.

    ``john@example.com`` -> ``j***@example.com``; other ids keep their first
    and last two characters (``491511234567`` -> ``49***67``), short ones only
    their first.
    """
    local, at, domain = user_id.partition("@")
    if at:
        return f"{local[:1]}***@{domain}"
    if len(user_id) > 6:
        return f"{user_id[:2]}***{user_id[-2:]}"
    return f"{user_id[:1]}***"
