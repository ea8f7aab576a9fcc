"""Bulk provisioning without services: batch splitting, the bound, and the API's
description of results and reasons."""

from __future__ import annotations

from typing import get_args

import pytest

from fairway.kernel.settings import Settings
from fairway.provision_bulk import (
    REASONS,
    BatchTooLarge,
    TenantItem,
    check_batch_size,
    split_batches,
)
from tests.unit.test_openapi import make_app
from web import models
from web.openapi import describe


def items(*devices: int) -> list[TenantItem]:
    return [
        TenantItem(tenant=f"t{i}", devices=[f"t{i}-d{j}" for j in range(n)])
        for i, n in enumerate(devices)
    ]


def test_batches_hold_at_most_the_bound_of_tenants_and_of_devices() -> None:
    sizes = [[len(b) for b in split_batches(items(0, 0, 0, 0, 0), 2)]]
    sizes.append([len(b) for b in split_batches(items(2, 1, 1, 3, 0), 3)])
    assert sizes == [[2, 2, 1], [2, 1, 2]]
    assert list(split_batches([], 3)) == []
    with pytest.raises(BatchTooLarge, match="lists 4 devices"):
        list(split_batches(items(1, 4), 3))


def test_the_bound_counts_tenants_and_devices_separately() -> None:
    check_batch_size(items(1, 1, 1), 3)
    with pytest.raises(BatchTooLarge, match="FAIRWAY_PROVISION_BATCH_MAX"):
        check_batch_size(items(0, 0, 0, 0), 3)
    with pytest.raises(BatchTooLarge, match="has 2 and 4"):
        check_batch_size(items(2, 2), 3)


def test_the_description_names_every_reason_and_the_configured_bound() -> None:
    assert set(get_args(models.ProvisionReason)) == set(REASONS)
    document = describe(make_app(provision_batch_max=250))
    schema = document["components"]["schemas"]["NewTenants"]["properties"]["tenants"]
    assert schema["maxItems"] == 250 and "(here 250)" in schema["description"]
    devices = document["components"]["schemas"]["NewDevices"]["properties"]["devices"]
    assert devices["maxItems"] == 250
    assert {"/api/tenants/bulk", "/api/devices/bulk"} <= set(document["paths"])


def test_a_batch_beyond_the_bound_is_refused_before_anything_is_done() -> None:
    body = {"tenants": [{"tenant": f"t{i}"} for i in range(3)]}
    settings = Settings.from_env({}, provision_batch_max=2)
    with pytest.raises(ValueError, match="at most 2 tenants"):
        models.NewTenants.model_validate(body, context={"settings": settings})
    with pytest.raises(ValueError, match="tenants"):
        models.NewTenants.model_validate({"tenants": []}, context={"settings": settings})
