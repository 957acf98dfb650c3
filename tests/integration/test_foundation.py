"""The foundation against real servers: the test server, and private servers started here."""
import json
import os
import signal
import stat
import sys
import subprocess
import tempfile
from pathlib import Path

import datajoint as dj
import pytest

from tests.servers import REPO, client_env, free_port, v1fabrik

ROUND_TRIP = """
import datajoint as dj, schemas
prefix = schemas.activate({prefix!r})
scratch = dj.Schema(prefix + "foundation")

@scratch
class Note(dj.Manual):
    definition = '''
    note_id : int32
    ---
    text : varchar(64)
    values : <blob>
    '''

Note.insert([(1, "first", [1.5, 2.5]), (2, "second", [])])
rows = Note.to_dicts(order_by="note_id")
print(dj.conn().adapter.backend, [(r["note_id"], r["text"], list(r["values"])) for r in rows])
for name in dj.list_schemas():
    if name.startswith(prefix):
        dj.Schema(name, create_schema=False).drop(prompt=False)
print(sorted(n for n in dj.list_schemas() if n.startswith(prefix)))
"""


@pytest.fixture
def reachable_home():
    """A folder every local user can enter (PostgreSQL runs as 'postgres' when we are root)."""
    folder = Path(tempfile.mkdtemp(prefix="v1fabrik-test-", dir="/tmp"))
    folder.chmod(0o755)
    yield folder
    subprocess.run(["rm", "-rf", str(folder)], check=False)


def round_trip(prefix, cwd, **env):
    """Run ROUND_TRIP in a fresh process with settings from ``cwd`` and ``env``; returns its last two lines."""
    result = subprocess.run([sys.executable, "-c", ROUND_TRIP.format(prefix=prefix)], cwd=cwd, env=client_env(**env),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()[-2:]


def test_activate_and_round_trip_on_the_test_server(db_prefix):
    assert f"{db_prefix}fabrik" in dj.list_schemas()
    backend = dj.conn().adapter.backend
    dj_env = {k: v for k, v in os.environ.items() if k.startswith("DJ_")}
    assert round_trip(db_prefix + "rt_", REPO, **dj_env) == [f"{backend} [(1, 'first', [1.5, 2.5]), (2, 'second', [])]", "[]"]


def test_mariadb_up_twice_status_stale_pid_and_down(reachable_home):
    env = {"V1FABRIK_HOME": str(reachable_home / "home"), "DJ_PORT": str(free_port())}
    first = v1fabrik("db", "up", cwd=reachable_home, **env)
    assert first.returncode == 0, first.stderr
    try:
        password = (reachable_home / ".secrets" / "database.password").read_text()
        state = json.loads((reachable_home / "home/db/mariadb/server.json").read_text())
        second = v1fabrik("db", "up", cwd=reachable_home, **env)
        assert second.returncode == 0, second.stderr
        assert f"already running (pid {state['pid']})" in second.stderr
        assert password not in first.stderr + first.stdout + second.stderr + second.stdout
        assert json.loads((reachable_home / "datajoint.json").read_text()) == {
            "database": {"host": "127.0.0.1", "port": int(env["DJ_PORT"]), "backend": "mysql"}}

        status = v1fabrik("db", "status", cwd=reachable_home, **env)
        assert status.returncode == 0
        assert f"mariadb: running, pid {state['pid']}, 127.0.0.1:{env['DJ_PORT']}, user v1fabrik" in status.stdout

        own = dj.Connection("127.0.0.1", "v1fabrik", password, port=int(env["DJ_PORT"]), backend="mysql")
        tuned = own.query("SELECT @@max_allowed_packet, @@innodb_lock_wait_timeout, @@collation_server").fetchone()
        own.close()
        assert tuned == (2**30, 300, "utf8mb4_bin")

        refused = subprocess.run([sys.executable, "-c", "import schemas.server.connection as c; c.connect()"],
                                 cwd=reachable_home, env=client_env(DJ_PASS="wrong"),
                                 capture_output=True, text=True, timeout=120)
        assert f"refused user 'v1fabrik'" in refused.stderr.strip().splitlines()[-1]

        os.kill(state["pid"], signal.SIGKILL)  # leaves a stale pid file and socket behind
        restarted = v1fabrik("db", "up", cwd=reachable_home, **env)
        assert restarted.returncode == 0, restarted.stderr
        assert "Removing stale" in restarted.stderr
        assert (reachable_home / ".secrets" / "database.password").read_text() == password

        # Another command asking for another port (CI after `make demo`): status says so, up moves the server.
        moved = {**env, "DJ_PORT": str(free_port())}
        elsewhere = v1fabrik("db", "status", "--backend", "mariadb", cwd=reachable_home, **moved)
        assert elsewhere.returncode == 3
        assert f"running on port {env['DJ_PORT']}, not on the asked port {moved['DJ_PORT']}" in elsewhere.stdout
        up_moved = v1fabrik("db", "up", cwd=reachable_home, **moved)
        assert up_moved.returncode == 0, up_moved.stderr
        assert f"restarting it on port {moved['DJ_PORT']}" in up_moved.stderr
        assert json.loads((reachable_home / "datajoint.json").read_text())["database"]["port"] == int(moved["DJ_PORT"])
        assert v1fabrik("db", "status", "--backend", "mariadb", cwd=reachable_home, **moved).returncode == 0
        assert round_trip("moved_", reachable_home)[0].startswith("mysql [(1, 'first'")
    finally:
        down = v1fabrik("db", "down", cwd=reachable_home, **env)
    assert down.returncode == 0 and "Stopped the mariadb server" in down.stderr
    after = v1fabrik("db", "status", "--backend", "mariadb", cwd=reachable_home, **env)
    assert after.returncode == 3 and "mariadb: not running" in after.stdout


def test_postgresql_up_activate_and_round_trip(reachable_home):
    env = {"V1FABRIK_HOME": str(reachable_home / "home"), "DJ_PORT": str(free_port())}
    up = v1fabrik("db", "up", "--backend", "postgresql", cwd=reachable_home, **env)
    assert up.returncode == 0, up.stderr
    try:
        data = reachable_home / "home/db/postgresql/data"
        assert stat.S_IMODE(data.stat().st_mode) == 0o700
        if os.geteuid() == 0:
            assert data.owner() == "postgres"
        expected = ["postgresql [(1, 'first', [1.5, 2.5]), (2, 'second', [])]", "[]"]
        assert round_trip("pgtest_", reachable_home) == expected
    finally:
        down = v1fabrik("db", "down", "--backend", "postgresql", cwd=reachable_home, **env)
    assert down.returncode == 0 and "Stopped the postgresql server" in down.stderr
