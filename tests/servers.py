"""Helpers for tests that start their own private database server or client process."""
import os
import socket
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def client_env(**overrides) -> dict:
    """This process's environment without any DJ_*/V1FABRIK_* settings, plus ``overrides``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJ_", "V1FABRIK_"))}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return {**env, **overrides}


def v1fabrik(*args, cwd, **env) -> subprocess.CompletedProcess:
    """Run the ``v1fabrik`` command line in ``cwd`` with a clean environment plus ``env``."""
    return subprocess.run([sys.executable, "-m", "schemas.cli", *args], cwd=cwd, env=client_env(**env),
                          capture_output=True, text=True, timeout=180)
