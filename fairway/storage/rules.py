"""Alert rules and their firing state: collections ``rules`` and ``alert_state``."""

from __future__ import annotations

from typing import Any

from pymongo import ASCENDING
from pymongo.database import Database

RULES = "rules"


ALERT_STATE = "alert_state"


def list_rules(db: Database, tenant: str | None) -> list[dict[str, Any]]:
    """The tenant's rules (every tenant's for None), oldest first."""
    query = {} if tenant is None else {"tenant": tenant}
    return list(db[RULES].find(query).sort([("created", ASCENDING), ("_id", ASCENDING)]))


def delete_rule(db: Database, tenant: str | None, rule_id: str) -> bool:
    """Delete a rule of ``tenant`` (any tenant's for None) and its firing state."""
    query: dict[str, Any] = {"_id": rule_id}
    if tenant is not None:
        query["tenant"] = tenant
    deleted = db[RULES].delete_one(query).deleted_count == 1
    if deleted:
        db[ALERT_STATE].delete_many({"rule": rule_id})
    return deleted


def load_firing(db: Database) -> set[tuple[str, str]]:
    """Every (rule id, device) whose alert is firing."""
    return {(d["rule"], d["device"]) for d in db[ALERT_STATE].find({"firing": True})}


def save_state(db: Database, alert: dict[str, Any]) -> None:
    """Persist one transition (an alert event body) into ``alert_state``."""
    db[ALERT_STATE].update_one(
        {"_id": f"{alert['rule']}:{alert['device']}"},
        {
            "$set": {
                "rule": alert["rule"],
                "tenant": alert["tenant"],
                "device": alert["device"],
                "firing": alert["state"] == "firing",
                "value": alert["value"],
                "at": alert["at"],
            }
        },
        upsert=True,
    )


def count_rules(db: Database, tenant: str) -> int:
    """How many rules ``tenant`` has."""
    return db[RULES].count_documents({"tenant": tenant})


def insert_rule(db: Database, doc: dict[str, Any]) -> None:
    """Store a checked rule document."""
    db[RULES].insert_one(doc)


def enabled_rules(db: Database) -> list[dict[str, Any]]:
    """Every tenant's enabled rules."""
    return list(db[RULES].find({"enabled": True}))
