"""How much each tenant channel may hold: the buffer budget shared by weight.

DRR can only give a tenant its weighted share if the tenant has that many messages
buffered, and a tenant can only have them if its prefetch allows. A fixed prefetch per
tenant therefore caps every backlogged tenant at the same number per write cycle,
ignoring weights, and leaves a lone flooding tenant unable to fill the writers. So the
scheduler shares one budget among the tenants that have a backlog, in proportion to
their weights, and gives idle tenants a small floor so their first messages flow at
once.

A prefetch counts messages (``basic.qos`` per consumer), but a message is a bundle of
up to ``bundle_max_readings`` readings. So both the floor and the shares are also
bounded in readings (``FAIRWAY_SCHEDULER_BUFFER_READINGS``), turned into messages with
the readings per message the tenant's deliveries carry (``x-fairway-readings``):

* floor = ``max(1, min(FAIRWAY_SCHEDULER_PREFETCH, budget_readings / (tenants x r)))``:
  all floors together hold about ``budget_readings`` readings, at least one message each;
* share = ``max(floor, min(FAIRWAY_SCHEDULER_BUFFER x w / W, budget_readings x w / (W x r)))``
  for a backlogged tenant of weight ``w`` (``W``: the backlogged tenants' weights).

So the scheduler holds at most about ``2 x budget_readings`` readings (floors plus
shares), or one message per tenant where that is more: a tenant whose prefetch is 1
holds one bundle, whatever its size, and DRR charges it its readings.
"""

from __future__ import annotations

from collections.abc import Mapping


def floor_prefetch(floor: int, budget_readings: int, tenants: int, readings_each: float) -> int:
    """A tenant's prefetch while it has no backlog, in messages (at least 1).

    ``floor`` messages, fewer when ``tenants`` floors of messages carrying
    ``readings_each`` readings would hold more than ``budget_readings`` readings.
    """
    per_tenant = budget_readings / (max(tenants, 1) * max(readings_each, 1.0))
    return max(1, min(floor, int(per_tenant)))


def prefetch_shares(
    floors: Mapping[str, int],
    backlogged: Mapping[str, int],
    budget: int,
    budget_readings: int | None = None,
    readings_each: Mapping[str, float] | None = None,
) -> dict[str, int]:
    """Prefetch per tenant: its floor, or its weighted share of the budgets when backlogged.

    ``floors`` maps every tenant to look at to its floor; ``backlogged`` is the subset
    (with weights) that has messages waiting. ``budget`` counts messages,
    ``budget_readings`` readings (None: no bound in readings), turned into messages with
    ``readings_each`` (readings per message of each tenant; absent: 1).
    """
    total = sum(backlogged.values())
    each = readings_each or {}
    shares = {}
    for tenant, floor in floors.items():
        weight = backlogged.get(tenant)
        if weight is None:
            shares[tenant] = floor
            continue
        share = budget * weight // total
        if budget_readings is not None:
            per_message = max(each.get(tenant, 1.0), 1.0)
            share = min(share, int(budget_readings * weight / (total * per_message)))
        shares[tenant] = max(floor, share)
    return shares


def worth_changing(current: float, wanted: float) -> bool:
    """Skip changes under 25 %: backlogs flicker, and each change is a broker round trip."""
    return abs(wanted - current) * 4 >= current
