"""Connecting: nothing at import time, and one clear sentence when the server is not there."""
import socket
import subprocess
import sys

import datajoint as dj
import pytest

from schemas.server import connection
from tests.servers import client_env, free_port


def run_python(code, cwd, **env):
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=client_env(**env),
                          capture_output=True, text=True, timeout=120)


def test_importing_schemas_connects_to_nothing(tmp_path):
    code = ("import schemas, schemas.cli.main, schemas.server.connection, schemas.server.local, datajoint.connection as c;"
            "assert not hasattr(c.conn, 'connection'), 'connected at import'")
    result = run_python(code, tmp_path, DJ_HOST="127.0.0.1", DJ_PORT=str(free_port()))
    assert result.returncode == 0, result.stderr


def test_unreachable_server_is_one_sentence_naming_host_and_port(tmp_path):
    port = free_port()
    result = run_python("import schemas; schemas.activate()", tmp_path, DJ_HOST="127.0.0.1", DJ_PORT=str(port),
                        DJ_USER="someone", DJ_PASS="secret")
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert lines[-1] == (f"schemas.server.connection.DatabaseUnavailable: Cannot reach the mysql server at 127.0.0.1:{port}: "
                         "start the local server with `v1fabrik db up`, or set DJ_HOST/DJ_PORT to your lab's server")
    traceback = result.stderr[result.stderr.index("Traceback"):].strip().splitlines()
    assert len(traceback) <= 7 and "During handling" not in result.stderr


def test_reachable_server_without_account_says_how_to_configure(tmp_path):
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        result = run_python("import schemas; schemas.activate()", tmp_path, DJ_HOST="127.0.0.1", DJ_PORT=str(port))
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].endswith(
        f"No database account is configured for the mysql server at 127.0.0.1:{port}: "
        "run `v1fabrik db up` in this folder or set DJ_USER and DJ_PASS")


def test_settings_split_a_port_written_into_the_host():
    with dj.config.override(database__host="db.lab.example:4000", database__user="ana"):
        assert connection.settings() == {"backend": dj.config["database.backend"], "host": "db.lab.example",
                                         "port": 4000, "user": "ana"}


def test_reachable_is_false_for_a_closed_port():
    assert not connection.reachable("127.0.0.1", free_port(), timeout=1)
    with socket.create_server(("127.0.0.1", 0)) as listener:
        assert connection.reachable("127.0.0.1", listener.getsockname()[1], timeout=1)
