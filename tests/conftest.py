import os
import random

import pytest
import torch


@pytest.fixture
def seed(request) -> int:
    """A fresh seed per test (drawn anew each run), printed on failure so a failing draw can be replayed."""
    s = int(os.environ.get("MX_TEST_SEED", random.SystemRandom().randrange(2**31)))
    torch.manual_seed(s)
    request.node.user_properties.append(("seed", s))
    return s


def pytest_runtest_makereport(item, call):
    if call.when == "call" and call.excinfo is not None:
        for name, value in item.user_properties:
            if name == "seed":
                item.add_report_section("call", "seed", f"replay with MX_TEST_SEED={value}")
