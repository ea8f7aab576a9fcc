"""The web app's refusal metric: every error answer, by stable code and caller's tenant.

``reason`` is bounded by the codes the app answers with (``reserved_id``,
``too_large``, ``too_many_attempts``, ``bad_parameter`` ...); ``tenant`` by the
provisioned tenants (empty for strangers and operators).
"""

from __future__ import annotations

from flask import g
from prometheus_client import Counter

REFUSED = Counter(
    "fairway_web_refused_total",
    "Requests the web app refused, by stable reason code and the caller's tenant",
    ["reason", "tenant"],
)


def count_refusal(reason: str) -> None:
    """Count one refusal, labelled with the authenticated caller's tenant if any."""
    user = g.get("user") if g else None
    tenant = (user.tenant or "") if user is not None else ""
    REFUSED.labels(reason, tenant).inc()
