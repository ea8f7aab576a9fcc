"""How much each tenant channel may hold: the buffer budget shared by weight.

DRR can only give a tenant its weighted share if the tenant has that many messages
buffered, and a tenant can only have them if its prefetch allows. A fixed prefetch per
tenant therefore caps every backlogged tenant at the same number per write cycle,
ignoring weights, and leaves a lone flooding tenant unable to fill the writers. So the
scheduler shares one budget (``FAIRWAY_SCHEDULER_BUFFER``) among the tenants that have
a backlog, in proportion to their weights, and gives idle tenants a small floor
(``FAIRWAY_SCHEDULER_PREFETCH``) so their first messages flow at once. The local buffer
stays bounded by ``budget + tenants x floor``.
"""

from __future__ import annotations

from collections.abc import Mapping


def prefetch_shares(
    tenants: Mapping[str, int], backlogged: Mapping[str, int], budget: int, floor: int
) -> dict[str, int]:
    """Prefetch per tenant: ``floor``, or its weighted share of ``budget`` when backlogged.

    ``tenants`` maps every tenant to its weight; ``backlogged`` is the subset (with
    weights) that has messages waiting.
    """
    total = sum(backlogged.values())
    return {
        tenant: max(floor, budget * backlogged[tenant] // total) if tenant in backlogged else floor
        for tenant in tenants
    }


def worth_changing(current: int, wanted: int) -> bool:
    """Skip changes under 25 %: backlogs flicker, and each change is a broker round trip."""
    return abs(wanted - current) * 4 >= current
