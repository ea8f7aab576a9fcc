"""Why a job failed, in words a user can act on (stored with the result as JSON)."""

from __future__ import annotations


class JobFailed(Exception):
    """A job ended without a result; the message says why and what to change."""
