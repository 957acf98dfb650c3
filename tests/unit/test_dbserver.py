"""The local server's bookkeeping, without starting a server."""
import json
import socket
import subprocess

import pytest

from schemas.server import local as dbserver


@pytest.fixture
def srv(tmp_path):
    return dbserver.server("mariadb", home=tmp_path / "home", port=3399)


def test_server_folder_and_default_ports(tmp_path, monkeypatch):
    monkeypatch.delenv("DJ_PORT", raising=False)
    monkeypatch.setenv("V1FABRIK_HOME", str(tmp_path))
    assert dbserver.server().folder == tmp_path / "db" / "mariadb"
    assert dbserver.server().port == 3307
    assert dbserver.server("postgresql").port == 5433
    monkeypatch.setenv("DJ_PORT", "4410")
    assert dbserver.server("postgresql").port == 4410


def test_bad_backend_and_port_are_named(monkeypatch):
    with pytest.raises(ValueError, match="unknown database backend 'sqlite'"):
        dbserver.server("sqlite")
    monkeypatch.setenv("DJ_PORT", "33o7")
    with pytest.raises(ValueError, match="DJ_PORT='33o7' is not a port number"):
        dbserver.server()


def test_client_config_keeps_other_settings_and_hides_the_password(tmp_path):
    (tmp_path / "datajoint.json").write_text(json.dumps(
        {"database": {"host": "old", "user": "old"}, "stores": {"local": {"protocol": "file", "location": "/s"}}}))
    settings = {"backend": "mysql", "host": "127.0.0.1", "port": 3399, "user": "v1fabrik", "password": "p4ss"}
    dbserver.write_client_config(tmp_path, settings)
    config = json.loads((tmp_path / "datajoint.json").read_text())
    assert config == {"database": {"host": "127.0.0.1", "port": 3399, "backend": "mysql"},
                      "stores": {"local": {"protocol": "file", "location": "/s"}}}
    secrets_dir = tmp_path / ".secrets"
    assert (secrets_dir / "database.user").read_text() == "v1fabrik"
    assert (secrets_dir / "database.password").read_text() == "p4ss"
    assert (secrets_dir / "database.password").stat().st_mode & 0o777 == 0o600
    assert secrets_dir.stat().st_mode & 0o777 == 0o700


def test_credentials_are_random_private_and_stable(srv, tmp_path):
    first = dbserver._credentials(srv)
    other = dbserver._credentials(dbserver.server("mariadb", home=tmp_path / "other"))
    assert first["user"] == "v1fabrik" and len(first["password"]) == 32
    assert first["password"] != other["password"]
    assert dbserver._credentials(srv) == first
    assert srv.credentials_file.stat().st_mode & 0o777 == 0o600


def test_stale_pid_and_socket_files_are_removed(srv):
    dead = subprocess.Popen(["true"])
    dead.wait()
    srv.folder.mkdir(parents=True)
    srv.state_file.write_text(json.dumps({"pid": dead.pid, "port": srv.port}))
    for name in ("mysqld.sock", "mysqld.pid"):
        (srv.folder / name).write_text("")
    assert srv.running() is None
    assert sorted(p.name for p in srv.folder.iterdir()) == []


def test_a_recycled_pid_of_another_program_is_not_our_server(srv):
    other = subprocess.Popen(["sleep", "30"])
    try:
        srv.folder.mkdir(parents=True)
        srv.state_file.write_text(json.dumps({"pid": other.pid, "port": srv.port}))
        assert srv.running() is None
        assert not srv.state_file.exists()
    finally:
        other.kill()
        other.wait()


def test_port_taken_by_another_program_is_refused(srv):
    with socket.create_server(("127.0.0.1", 0)) as listener:
        srv.port = listener.getsockname()[1]
        with pytest.raises(dbserver.ServerError, match=f"Port {srv.port} on 127.0.0.1 is taken by another program"):
            dbserver.up(srv, srv.folder)


def test_missing_server_software_says_what_to_install(srv, monkeypatch):
    monkeypatch.setattr(dbserver, "_find_binaries", lambda backend: None)
    monkeypatch.setattr(dbserver, "_can_apt_install", lambda: False)
    srv.port = 1  # nothing listens there
    with pytest.raises(dbserver.ServerError, match=r"No mariadb server is installed: install the Debian package "
                                                   r"mariadb-server \(apt-get install mariadb-server\)"):
        dbserver.up(srv, srv.folder)


def test_failed_initialisation_leaves_no_half_written_data_folder(srv, monkeypatch):
    monkeypatch.setattr(dbserver, "_find_binaries", lambda backend: {"server": "false", "install_db": "false"})
    srv.port = 1
    with pytest.raises(dbserver.ServerError, match=f"false failed .*; see {srv.log_file}"):
        dbserver.up(srv, srv.folder)
    assert not srv.data.exists()
    assert srv.running() is None


def test_a_non_empty_folder_v1fabrik_did_not_create_is_never_deleted(tmp_path):
    data = tmp_path / "db" / "mariadb" / "data"
    data.mkdir(parents=True)
    (data / "thesis.tex").write_text("years of work")
    with pytest.raises(dbserver.ServerError, match=f"{data} is not empty and was not created by v1fabrik"):
        with dbserver._fresh_folder(data):
            pass
    assert (data / "thesis.tex").read_text() == "years of work"


def test_a_half_initialised_folder_of_ours_is_replaced_and_removed_on_failure(tmp_path):
    data = tmp_path / "data"
    with pytest.raises(RuntimeError):
        with dbserver._fresh_folder(data):
            (data / "ibdata1").write_text("half")
            raise RuntimeError("install_db failed")
    assert not data.exists() and (tmp_path / "data.v1fabrik").exists()
    data.mkdir()
    (data / "ibdata1").write_text("half")  # left by a crash that skipped the cleanup
    with dbserver._fresh_folder(data):
        assert list(data.iterdir()) == []
