"""Connecting to the database with DataJoint's own configuration.

Settings come from DataJoint alone: ``DJ_HOST``/``DJ_PORT``/``DJ_USER``/``DJ_PASS``/``DJ_BACKEND``,
then ``datajoint.json`` (searched upward from the working directory) and ``.secrets/`` beside it,
which ``v1fabrik db up`` writes for the private local server. Nothing here stores credentials.

DataJoint's defaults are kept on purpose: ``database.reconnect`` (on) lets a worker's connection
survive hours of training between jobs, and ``safemode`` (on) keeps the confirmation prompt before
anyone deletes rows or drops schemas on a shared lab server. Workers never delete, so they do not
need it off; tests drop their schemas with ``prompt=False``.
"""
import copy
import logging
import socket

import datajoint as dj

logger = logging.getLogger(__name__)

REACH_TIMEOUT_S = 3
# Client error codes of MySQL/MariaDB for a server that is gone or unreachable.
MYSQL_CONNECTION_CODES = {2003, 2006, 2013, 2055}
# A statement that lost a lock race with another worker (deadlock, lock wait timeout): MySQL/MariaDB
# error codes and PostgreSQL SQLSTATEs (serialization_failure, deadlock_detected, lock_not_available).
MYSQL_LOCK_CODES = {1205, 1213}
POSTGRES_LOCK_STATES = {"40001", "40P01", "55P03"}


class DatabaseUnavailable(ConnectionError):
    """The database server cannot be reached or refuses the configured account."""


def settings() -> dict:
    """Backend, host, port and user DataJoint will connect with (no password)."""
    host, port = dj.config["database.host"], dj.config["database.port"]
    if ":" in host:
        host, port = host.rsplit(":", 1)
    return {"backend": dj.config["database.backend"], "host": host, "port": int(port),
            "user": dj.config["database.user"]}


def connect(reset: bool = False) -> dj.Connection:
    """DataJoint's shared connection, checked first so that failures read as one sentence."""
    target = settings()
    where = f"{target['backend']} server at {target['host']}:{target['port']}"
    if not reachable(target["host"], target["port"]):
        raise DatabaseUnavailable(
            f"Cannot reach the {where}: start the local server with `v1fabrik db up`, "
            "or set DJ_HOST/DJ_PORT to your lab's server")
    if target["user"] is None or dj.config["database.password"] is None:
        raise DatabaseUnavailable(
            f"No database account is configured for the {where}: run `v1fabrik db up` in this folder "
            "or set DJ_USER and DJ_PASS")
    try:
        return dj.conn(reset=reset)
    except Exception as err:  # the drivers' errors share no base class
        raise DatabaseUnavailable(
            f"The {where} refused user {target['user']!r} ({_reason(err)}): check DJ_USER/DJ_PASS "
            "or .secrets/, or run `v1fabrik db up` for the local server") from None


def reachable(host: str, port: int, timeout: float = REACH_TIMEOUT_S) -> bool:
    """True when something accepts TCP connections at ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _reason(err: Exception) -> str:
    text = " ".join(str(err).split())
    return text[:200] or type(err).__name__


def private_connection() -> dj.Connection:
    """A second connection with DataJoint's settings, for a thread that must not share the main one.

    It never reconnects by itself: a session that drops takes its named locks with it, and its owner
    must notice (a silent reconnect would leave it believing it still holds them).
    """
    config = copy.deepcopy(dj.config)
    config["database.reconnect"] = False
    return dj.Connection(config["database.host"], config["database.user"], config["database.password"],
                         None, config["database.use_tls"], config_override=config)


def is_connection_error(error: BaseException) -> bool:
    """True for a lost or refused database connection, from DataJoint or the MySQL/PostgreSQL driver."""
    if isinstance(error, (dj.errors.LostConnectionError, ConnectionError)):
        return True
    module = type(error).__module__ or ""
    if module.startswith("pymysql") and type(error).__name__ in ("OperationalError", "InterfaceError"):
        return not error.args or error.args[0] in MYSQL_CONNECTION_CODES
    return module.startswith("psycopg") and type(error).__name__ in ("OperationalError", "InterfaceError")


def is_lock_conflict(error: BaseException) -> bool:
    """True when the server rolled the statement back because it lost a lock race; running it again is safe."""
    if (type(error).__module__ or "").startswith("pymysql"):
        return bool(error.args) and error.args[0] in MYSQL_LOCK_CODES
    return getattr(error, "pgcode", None) in POSTGRES_LOCK_STATES
