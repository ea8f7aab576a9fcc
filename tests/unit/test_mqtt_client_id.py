"""Which MQTT client ids a device may use (``web.broker_auth.client_id_allowed``)."""

from __future__ import annotations

import pytest

from web.broker_auth import client_id_allowed


@pytest.mark.parametrize("client_id", ["dev", "dev.1", "dev.backup.2", "dev.-"])
def test_own_ids(client_id: str) -> None:
    assert client_id_allowed("dev", client_id)


@pytest.mark.parametrize(
    "client_id",
    ["", "de", "dev.", "devx", "dev-2", "dev_2", "Dev", "x.dev", " dev", "dev "],
)
def test_anything_else(client_id: str) -> None:
    # "dev-2" and "dev_2" are (or could be) other devices' ids: ids contain - and _.
    assert not client_id_allowed("dev", client_id)


def test_no_two_devices_share_an_allowed_id() -> None:
    devices = ["a", "a-b", "a_b", "a-b-c", "ab"]
    ids = ["a", "a-b", "a_b", "a-b-c", "ab", "a.b", "a-b.c", "ab.x", "a.b-c"]
    for client_id in ids:
        owners = [d for d in devices if client_id_allowed(d, client_id)]
        assert len(owners) <= 1, (client_id, owners)
