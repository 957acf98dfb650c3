"""The private local database server behind ``v1fabrik db up / status / down``.

Each backend lives in ``<home>/db/<backend>/`` (home: ``$V1FABRIK_HOME``, else ``./.v1fabrik``)::

    data/              the server's data files
    server.json        pid and port of the running server (ours, not the server's own pid file)
    credentials.json   user and password (mode 600)
    server.log         the server's log

The server listens on 127.0.0.1 only. ``up`` writes ``datajoint.json`` (host, port, backend) and
``.secrets/database.user|password`` into the working directory, where DataJoint looks for them.
"""
import contextlib
import json
import logging
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

BACKENDS = ("mariadb", "postgresql")
DEFAULT_PORTS = {"mariadb": 3307, "postgresql": 5433}
DJ_BACKEND = {"mariadb": "mysql", "postgresql": "postgresql"}
APT_PACKAGE = {"mariadb": "mariadb-server", "postgresql": "postgresql"}
SERVER_PROGRAMS = {"mariadb": ("mariadbd", "mysqld"), "postgresql": ("postgres",)}
USER = "v1fabrik"
HOST = "127.0.0.1"
PG_OS_USER = "postgres"  # PostgreSQL refuses to run as root; as root we run it as this user
MARKER_SUFFIX = ".v1fabrik"  # beside a data folder v1fabrik created: data.v1fabrik
START_TIMEOUT_S = 60
STOP_TIMEOUT_S = 60

# Tuned for hours-long populate jobs and large weight blobs, as in the datajoint/mysql image.
MARIADB_OPTIONS = {
    "max_allowed_packet": "1G",
    "wait_timeout": "86400",
    "interactive_timeout": "86400",
    "innodb_lock_wait_timeout": "300",
    "character-set-server": "utf8mb4",
    "collation-server": "utf8mb4_bin",  # case-sensitive keys, as DataJoint 2 assumes
    "sql_mode": "STRICT_ALL_TABLES,NO_ZERO_IN_DATE,NO_ZERO_DATE,ERROR_FOR_DIVISION_BY_ZERO,NO_ENGINE_SUBSTITUTION",
    "skip-name-resolve": None,
    "innodb_buffer_pool_size": "256M",
}
POSTGRES_OPTIONS = {
    "listen_addresses": HOST,
    "unix_socket_directories": "",
    "max_connections": "200",
}


class ServerError(RuntimeError):
    """The local server cannot be started, found or stopped; the message says what to do."""


def default_home() -> Path:
    """``$V1FABRIK_HOME``, else ``.v1fabrik`` in the working directory."""
    return Path(os.environ.get("V1FABRIK_HOME") or Path.cwd() / ".v1fabrik").absolute()


def default_port(backend: str) -> int:
    """``$DJ_PORT``, else the backend's default (3307 MariaDB, 5433 PostgreSQL)."""
    value = os.environ.get("DJ_PORT")
    if not value:
        return DEFAULT_PORTS.get(backend, 0)  # an unknown backend is refused by Server
    if not value.isdigit():
        raise ValueError(f"DJ_PORT={value!r} is not a port number")
    return int(value)


@dataclass
class Server:
    """One private server: a backend, its folder and the port it should listen on."""

    backend: str
    folder: Path
    port: int

    def __post_init__(self):
        if self.backend not in BACKENDS:
            raise ValueError(f"unknown database backend {self.backend!r}; choose one of {', '.join(BACKENDS)}")

    @property
    def data(self) -> Path:
        return self.folder / "data"

    @property
    def state_file(self) -> Path:
        return self.folder / "server.json"

    @property
    def credentials_file(self) -> Path:
        return self.folder / "credentials.json"

    @property
    def log_file(self) -> Path:
        return self.folder / "server.log"

    def running(self) -> dict | None:
        """The ``{"pid", "port"}`` of the live server, or None (after removing stale pid/socket files)."""
        try:
            state = json.loads(self.state_file.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            state = None
        if state and _alive(state["pid"], SERVER_PROGRAMS[self.backend]):
            return state
        self._remove_stale_files()
        return None

    def _remove_stale_files(self):
        stale = [self.state_file, self.folder / "mysqld.sock", self.folder / "mysqld.pid", self.data / "postmaster.pid"]
        for path in stale:
            if path.exists():
                logger.info("Removing stale %s", path)
                path.unlink()


def server(backend: str = "mariadb", home: Path | None = None, port: int | None = None) -> Server:
    """The Server for ``backend`` under ``home`` (default :func:`default_home`) on ``port``."""
    home = Path(home) if home else default_home()
    return Server(backend, home / "db" / backend, port or default_port(backend))


def up(srv: Server, workdir: Path | None = None) -> dict:
    """Start ``srv`` unless it runs already on its port; write the client config into ``workdir``; return the settings.

    A server of this folder running on another port (say the demo's on 3307, when CI asks for another)
    is restarted on the asked one, so that the commands work whatever ran before them.
    """
    state = srv.running()
    if state and state["port"] != srv.port:
        logger.info("The %s server runs on port %d; restarting it on port %d as asked.", srv.backend,
                    state["port"], srv.port)
        down(srv)
        state = None
    if state:
        logger.info("The %s server is already running (pid %d).", srv.backend, state["pid"])
    else:
        state = _start(srv)
    settings = client_settings(srv, state["port"])
    write_client_config(Path(workdir or Path.cwd()), settings)
    return settings


def status(srv: Server) -> dict | None:
    """``{"backend", "pid", "host", "port", "user", "folder"}`` of the running server, or None."""
    state = srv.running()
    if not state:
        return None
    return {"backend": srv.backend, "pid": state["pid"], "host": HOST, "port": state["port"],
            "user": _credentials(srv)["user"], "folder": str(srv.folder)}


def down(srv: Server) -> bool:
    """Stop the running server by its pid; returns False when none was running."""
    state = srv.running()
    if not state:
        return False
    pid = state["pid"]
    # PostgreSQL: SIGINT is "fast" shutdown (SIGTERM would wait for every client to disconnect).
    os.kill(pid, signal.SIGINT if srv.backend == "postgresql" else signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT_S
    while _alive(pid, SERVER_PROGRAMS[srv.backend]):
        if time.monotonic() > deadline:
            raise ServerError(f"The {srv.backend} server (pid {pid}) did not stop within {STOP_TIMEOUT_S} s; see {srv.log_file}")
        time.sleep(0.2)
    srv.state_file.unlink(missing_ok=True)
    logger.info("Stopped the %s server (pid %d).", srv.backend, pid)
    return True


def client_settings(srv: Server, port: int) -> dict:
    """What a DataJoint client needs to reach ``srv``."""
    creds = _credentials(srv)
    return {"backend": DJ_BACKEND[srv.backend], "host": HOST, "port": port,
            "user": creds["user"], "password": creds["password"]}


def write_client_config(workdir: Path, settings: dict) -> None:
    """Point DataJoint at the server: ``datajoint.json`` (host, port, backend) plus ``.secrets/``.

    Other keys of an existing ``datajoint.json`` (stores, display, ...) are kept.
    """
    config_file = workdir / "datajoint.json"
    config = json.loads(config_file.read_text()) if config_file.exists() else {}
    config["database"] = {"host": settings["host"], "port": settings["port"], "backend": settings["backend"]}
    config_file.write_text(json.dumps(config, indent=2) + "\n")
    secrets_dir = workdir / ".secrets"
    secrets_dir.mkdir(mode=0o700, exist_ok=True)
    _write_private(secrets_dir / "database.user", settings["user"])
    _write_private(secrets_dir / "database.password", settings["password"])
    logger.info("Connection: %s at %s:%s, user %s; password in %s (written with %s)",
                settings["backend"], settings["host"], settings["port"], settings["user"],
                secrets_dir / "database.password", config_file)


def _start(srv: Server) -> dict:
    if _port_open(srv.port):
        raise ServerError(f"Port {srv.port} on {HOST} is taken by another program: stop it or set DJ_PORT to a free port")
    binaries = _binaries(srv.backend)
    srv.folder.mkdir(parents=True, exist_ok=True)
    creds = _credentials(srv)
    start = _start_mariadb if srv.backend == "mariadb" else _start_postgres
    logger.info("Starting a private %s server in %s on %s:%d ...", srv.backend, srv.folder, HOST, srv.port)
    process = start(srv, binaries, creds)
    try:
        _wait_until_ready(srv, process, creds)
    finally:
        (srv.folder / "init.sql").unlink(missing_ok=True)
    state = {"pid": process.pid, "port": srv.port}
    srv.state_file.write_text(json.dumps(state) + "\n")
    logger.info("The %s server is up (pid %d).", srv.backend, process.pid)
    return state


def _start_mariadb(srv: Server, binaries: dict, creds: dict) -> subprocess.Popen:
    as_root = ["--user=root"] if os.geteuid() == 0 else []
    if not (srv.data / "mysql").is_dir():
        with _fresh_folder(srv.data):
            _run([binaries["install_db"], "--no-defaults", f"--datadir={srv.data}", "--skip-test-db",
                  "--auth-root-authentication-method=socket", *as_root], srv.log_file)
    # Runs on every start, so the account always matches credentials.json.
    user, password = creds["user"], creds["password"]
    _write_private(srv.folder / "init.sql", "\n".join([
        "DROP USER IF EXISTS ''@'localhost';",
        f"CREATE USER IF NOT EXISTS '{user}'@'%' IDENTIFIED BY '{password}';",
        f"ALTER USER '{user}'@'%' IDENTIFIED BY '{password}';",
        f"GRANT ALL PRIVILEGES ON *.* TO '{user}'@'%';",
    ]) + "\n")
    options = {**MARIADB_OPTIONS, "datadir": srv.data, "port": srv.port, "bind-address": HOST,
               "socket": srv.folder / "mysqld.sock", "pid-file": srv.folder / "mysqld.pid",
               "init-file": srv.folder / "init.sql", "tmpdir": srv.folder / "tmp"}  # not /tmp, which others clean
    (srv.folder / "tmp").mkdir(mode=0o700, exist_ok=True)
    args = ["--no-defaults", *as_root] + [f"--{k}" if v is None else f"--{k}={v}" for k, v in options.items()]
    return _spawn([binaries["server"], *args], srv.log_file)


def _start_postgres(srv: Server, binaries: dict, creds: dict) -> subprocess.Popen:
    _require_module("psycopg2", "PostgreSQL support needs psycopg2: pip install -e '.[postgres]'")
    os_user = _postgres_os_user(srv.folder)
    if not (srv.data / "PG_VERSION").is_file():
        pwfile = srv.folder / "pwfile"
        _write_private(pwfile, creds["password"])
        try:
            with _fresh_folder(srv.data):
                if os_user:
                    shutil.chown(srv.data, os_user.pw_uid, os_user.pw_gid)
                    shutil.chown(pwfile, os_user.pw_uid, os_user.pw_gid)
                _run([binaries["initdb"], "-D", srv.data, "-U", creds["user"], f"--pwfile={pwfile}",
                      "--auth=scram-sha-256", "--encoding=UTF8", "--locale=C"], srv.log_file, os_user)
        finally:
            pwfile.unlink(missing_ok=True)
    options = {**POSTGRES_OPTIONS, "port": srv.port}
    args = [a for k, v in options.items() for a in ("-c", f"{k}={v}")]
    return _spawn([binaries["server"], "-D", srv.data, *args], srv.log_file, os_user)


def _postgres_os_user(folder: Path):
    """None when not root; else the unprivileged account PostgreSQL runs as (it must reach ``folder``)."""
    if os.geteuid() != 0:
        return None
    try:
        account = pwd.getpwnam(PG_OS_USER)
    except KeyError:
        raise ServerError(f"PostgreSQL refuses to run as root and there is no '{PG_OS_USER}' user: "
                          f"install the postgresql package or run as a normal user") from None
    for parent in [folder, *folder.parents]:
        if parent.exists() and not _enterable(parent, account):
            raise ServerError(f"PostgreSQL runs as '{PG_OS_USER}', which cannot enter {parent}: "
                              f"set V1FABRIK_HOME to a folder it can reach, e.g. /var/tmp/v1fabrik")
    return account


def _enterable(path: Path, account) -> bool:
    st = path.stat()
    if st.st_uid == account.pw_uid:
        return bool(st.st_mode & 0o100)
    if st.st_gid == account.pw_gid:
        return bool(st.st_mode & 0o010)
    return bool(st.st_mode & 0o001)


@contextlib.contextmanager
def _fresh_folder(folder: Path):
    """Create an empty private ``folder`` for a server to initialise; remove it again if that fails.

    A folder left half-initialised by an earlier failure carries our marker file beside it and is
    replaced; a non-empty folder without the marker was not made by v1fabrik and is never deleted.
    """
    marker = folder.with_name(folder.name + MARKER_SUFFIX)
    if folder.exists() and any(folder.iterdir()):
        if not marker.exists():
            raise ServerError(f"{folder} is not empty and was not created by v1fabrik: move it away, "
                              "or set V1FABRIK_HOME to another folder")
        shutil.rmtree(folder)  # a half-initialised folder from an earlier failure
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    marker.write_text("created by v1fabrik db up; the folder beside this file may be deleted by it\n")
    try:
        yield
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise


def _wait_until_ready(srv: Server, process: subprocess.Popen, creds: dict) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        if process.poll() is not None:
            raise ServerError(f"The {srv.backend} server exited during start-up ({_last_line(srv.log_file)}); see {srv.log_file}")
        if _can_log_in(srv.backend, srv.port, creds):
            return
        if time.monotonic() > deadline:
            process.kill()
            raise ServerError(f"The {srv.backend} server did not accept logins within {START_TIMEOUT_S} s; see {srv.log_file}")
        time.sleep(0.25)


def _can_log_in(backend: str, port: int, creds: dict) -> bool:
    login = dict(host=HOST, port=port, user=creds["user"], password=creds["password"], connect_timeout=2)
    if backend == "mariadb":
        import pymysql

        connect, error = pymysql.connect, pymysql.err.OperationalError
    else:
        import psycopg2

        connect, error = psycopg2.connect, psycopg2.OperationalError
        login["dbname"] = "postgres"
    try:
        connect(**login).close()
    except error:
        return False
    return True


def _binaries(backend: str) -> dict:
    """Paths of the server programs, installed with apt when missing and allowed; else ServerError."""
    found = _find_binaries(backend)
    if found is None and _can_apt_install():
        logger.info("Installing %s with apt-get ...", APT_PACKAGE[backend])
        _apt_install(APT_PACKAGE[backend])
        found = _find_binaries(backend)
    if found is None:
        raise ServerError(f"No {backend} server is installed: install the Debian package {APT_PACKAGE[backend]} "
                          f"(apt-get install {APT_PACKAGE[backend]}) or set DJ_HOST to an existing server")
    return found


def _find_binaries(backend: str) -> dict | None:
    if backend == "mariadb":
        path = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/local/sbin", "/usr/local/mysql/bin"])
        server_bin = shutil.which("mariadbd", path=path) or shutil.which("mysqld", path=path)
        install_db = shutil.which("mariadb-install-db", path=path) or shutil.which("mysql_install_db", path=path)
        return {"server": server_bin, "install_db": install_db} if server_bin and install_db else None
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"), key=lambda p: int(p.parent.parent.name)
                      if p.parent.parent.name.isdigit() else 0)
    if not versions:
        return None
    bin_dir = versions[-1].parent
    if int(bin_dir.parent.name) < 15:
        raise ServerError(f"PostgreSQL {bin_dir.parent.name} is installed but DataJoint 2 needs PostgreSQL 15 or newer")
    return {"server": str(bin_dir / "postgres"), "initdb": str(bin_dir / "initdb")}


def _can_apt_install() -> bool:
    return os.geteuid() == 0 and Path("/etc/debian_version").exists() and shutil.which("apt-get") is not None


def _apt_install(package: str) -> None:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", package]
    if subprocess.run(install, env=env, capture_output=True).returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True)
        result = subprocess.run(install, env=env, capture_output=True, text=True)
        if result.returncode != 0:
            raise ServerError(f"apt-get install {package} failed: {_last_line_of(result.stderr)}")


def _credentials(srv: Server) -> dict:
    """The server's account, created with a random password on first use."""
    if srv.credentials_file.exists():
        return json.loads(srv.credentials_file.read_text())
    creds = {"user": USER, "password": secrets.token_hex(16)}
    srv.folder.mkdir(parents=True, exist_ok=True)
    _write_private(srv.credentials_file, json.dumps(creds) + "\n")
    return creds


def _spawn(cmd: list, log_file: Path, os_user=None) -> subprocess.Popen:
    with open(log_file, "ab") as log:
        return subprocess.Popen([str(c) for c in cmd], stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                start_new_session=True, **_as_user(os_user))


def _run(cmd: list, log_file: Path, os_user=None) -> None:
    with open(log_file, "ab") as log:
        result = subprocess.run([str(c) for c in cmd], stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                **_as_user(os_user))
    if result.returncode != 0:
        raise ServerError(f"{Path(str(cmd[0])).name} failed ({_last_line(log_file)}); see {log_file}")


def _as_user(os_user) -> dict:
    if os_user is None:
        return {}
    return {"user": os_user.pw_uid, "group": os_user.pw_gid, "extra_groups": [], "cwd": "/",
            "env": {**os.environ, "HOME": os_user.pw_dir, "USER": os_user.pw_name, "LOGNAME": os_user.pw_name}}


def _alive(pid: int, programs: tuple) -> bool:
    """True when ``pid`` is a live (non-zombie) process running one of ``programs``."""
    try:
        os.waitpid(pid, os.WNOHANG)  # reaps it if it is our own exited child
    except ChildProcessError:
        pass
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError):
        return False
    state = stat.rsplit(")", 1)[1].split()[0]
    program = Path(cmdline.split(b"\0", 1)[0].decode(errors="replace")).name
    return state != "Z" and program in programs


def _port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(1)
        return sock.connect_ex((HOST, port)) == 0


def _write_private(path: Path, text: str) -> None:
    path.touch(mode=0o600, exist_ok=True)
    path.chmod(0o600)
    path.write_text(text)


def _require_module(name: str, message: str) -> None:
    import importlib.util

    if importlib.util.find_spec(name) is None:
        raise ServerError(message)


def _last_line(log_file: Path) -> str:
    return _last_line_of(log_file.read_text(errors="replace")) if log_file.exists() else "no log"


def _last_line_of(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "no output"
