"""Fixtures of the tus tests."""

from __future__ import annotations

import pytest

from tests.conftest import create, patch


@pytest.fixture
async def upload(gateway, http):
    url = await create(http, gateway, 10)
    assert (await patch(http, url, 0, b"abcd")).status == 204
    return url
