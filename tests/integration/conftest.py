"""Fixtures shared by the integration tests."""
import os

import pytest

from pipeline import builder

HELPER_MODULES = "tests.integration"  # the test-only dataset, model and trainer functions


@pytest.fixture(scope="module")
def fabrik(db_prefix):
    """The bound tables (``schemas``), with the test helpers allowed and seeds 1-3."""
    os.environ[builder.ALLOWED_MODULES_ENV] = HELPER_MODULES
    import schemas

    schemas.Seed.insert([{"seed": s} for s in (1, 2, 3)], skip_duplicates=True)
    yield schemas
    os.environ.pop(builder.ALLOWED_MODULES_ENV)
