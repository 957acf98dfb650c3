"""Shared fixtures. Tests that use a fixture of ``SERVER_FIXTURES`` are marked ``db`` automatically.

``db`` tests connect to the server that ``make test`` started (its ``datajoint.json`` and
``.secrets/`` in the repository root) or to ``DJ_HOST``. Without a server they fail, never skip;
``pytest -m "not db"`` needs none.
"""
import os
import secrets
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


# The test server (db_prefix) and the folder private servers are started in (tests/integration/test_foundation.py).
SERVER_FIXTURES = {"db_prefix", "reachable_home"}


def pytest_collection_modifyitems(items):
    for item in items:
        if SERVER_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.db)


@pytest.fixture(scope="module")
def db_prefix():
    """Bind the v1fabrik tables under a fresh schema prefix per test module; drop its schemas afterwards.

    One prefix per module keeps the modules independent of each other's rows and of their order.
    """
    import schemas

    prefix = f"test_{os.getpid()}_{secrets.token_hex(3)}_"
    schemas.activate(prefix)
    yield prefix
    drop_schemas(prefix)


def drop_schemas(prefix: str) -> None:
    """Drop every schema whose name starts with ``prefix``, dependents first."""
    import datajoint as dj

    remaining = [name for name in dj.list_schemas() if name.startswith(prefix)]
    while remaining:
        failed = []
        for name in remaining:
            try:
                dj.Schema(name, create_schema=False).drop(prompt=False)
            except dj.errors.DataJointError:  # still referenced by a schema not dropped yet
                failed.append(name)
        if len(failed) == len(remaining):
            raise RuntimeError(f"could not drop the test schemas {failed}")
        remaining = failed


@pytest.fixture(scope="module")
def installed_lab(tmp_path_factory):
    """tests/lab_package, pip-installed (offline, from a copy, so no build files land in the tree) into a folder
    to put on PYTHONPATH: its functions register through its ``v1fabrik.functions`` entry points."""
    tmp = tmp_path_factory.mktemp("lab")
    shutil.copytree(REPO / "tests" / "lab_package", tmp / "src")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index",
                    "--target", str(tmp / "site"), str(tmp / "src")], check=True, timeout=300)
    return tmp / "site"
