"""The lab deployment files, checked without Docker: services, GPUs, data, start order, secrets, the image, its version."""
import ast
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
COMPOSE = yaml.safe_load((DOCKER / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
DOCKERFILE = (DOCKER / "Dockerfile").read_text()
ENV_EXAMPLE = dict(line.split("=", 1) for line in (DOCKER / ".env.example").read_text().splitlines()
                   if line and not line.startswith("#"))
SECRET_NAME = re.compile(r"PASS|TOKEN|SECRET|KEY", re.IGNORECASE)
COMMIT = "0123456789ab"


def dockerfile_instruction(name):
    return [line.split(None, 1)[1] for line in DOCKERFILE.splitlines() if line.startswith(name + " ")]


def test_the_four_services():
    assert set(SERVICES) == {"db", "init", "worker", "notebook"}
    assert SERVICES["db"]["image"] == "mysql:8.0"
    for name in ("init", "worker", "notebook"):
        assert SERVICES[name]["build"] == {"context": "..", "dockerfile": "docker/Dockerfile",
                                           "args": {"V1FABRIK_COMMIT": "${V1FABRIK_COMMIT:-unknown}"}}


def test_db_is_configured_like_the_datajoint_image():
    flags = dict(flag.removeprefix("--").split("=", 1) for flag in SERVICES["db"]["command"])
    assert flags["max-allowed-packet"] == "512M"
    assert int(flags["wait-timeout"]) >= 24 * 3600  # a long make_compute keeps its connection
    assert int(flags["innodb-lock-wait-timeout"]) >= 600 and int(flags["lock-wait-timeout"]) >= 600
    assert "STRICT_ALL_TABLES" in flags["sql-mode"].split(",")
    assert flags["collation-server"] == "utf8mb4_bin"  # DataJoint 2 assumes case-sensitive keys
    assert int(flags["max-connections"]) >= 2 * 100  # two connections per worker, room for 100 GPU workers


def test_db_data_lives_in_a_named_volume_with_a_healthcheck():
    volumes = SERVICES["db"]["volumes"]
    assert "mysql-data:/var/lib/mysql" in volumes and "mysql-data" in COMPOSE["volumes"]
    check = SERVICES["db"]["healthcheck"]
    assert check["test"][0] == "CMD-SHELL" and "mysqladmin ping -h 127.0.0.1" in check["test"][1]
    assert check["retries"] * int(check["interval"].rstrip("s")) >= 60


def test_start_order_is_gated_on_a_healthy_db_and_a_finished_init():
    assert SERVICES["init"]["depends_on"] == {"db": {"condition": "service_healthy"}}
    assert SERVICES["init"]["command"] == ["init"] and SERVICES["init"]["restart"] == "no"
    for name in ("worker", "notebook"):
        assert SERVICES[name]["depends_on"] == {
            "db": {"condition": "service_healthy"},
            "init": {"condition": "service_completed_successfully"},
        }


def test_worker_reserves_a_gpu_and_runs_the_worker_command():
    (gpu,) = SERVICES["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert gpu["driver"] == "nvidia" and gpu["capabilities"] == ["gpu"]
    assert gpu["device_ids"] == ["${WORKER_GPU:-0}"]
    assert "replicas" not in SERVICES["worker"]["deploy"]  # scaled with --scale worker=N
    entrypoint = json.loads(dockerfile_instruction("ENTRYPOINT")[0])
    assert entrypoint + json.loads(dockerfile_instruction("CMD")[0]) == ["v1fabrik", "worker", "--wait"]
    assert entrypoint + SERVICES["worker"]["command"] == ["v1fabrik", "worker", "--device", "cuda:0", "--wait"]


def test_services_connect_to_the_db_service_with_their_own_accounts():
    users = {}
    for name in ("init", "worker", "notebook"):
        env = SERVICES[name]["environment"]
        assert env["DJ_HOST"] == "db"
        users[name] = env["DJ_USER"]
    assert users == {"init": "v1fabrik_admin", "worker": "v1fabrik_worker", "notebook": "v1fabrik_worker"}


def test_notebook_serves_jupyterlab_on_the_notebooks_folder_behind_a_token():
    notebook = SERVICES["notebook"]
    assert notebook["entrypoint"] == ["jupyter", "lab"]
    assert "../notebooks:/home/v1fabrik/notebooks" in notebook["volumes"]
    assert "--notebook-dir=/home/v1fabrik/notebooks" in notebook["command"]
    assert notebook["environment"]["JUPYTER_TOKEN"].startswith("${JUPYTER_TOKEN:?")
    assert notebook["ports"][0].startswith("127.0.0.1:")


def test_no_secret_is_committed():
    for service in SERVICES.values():
        for key, value in service.get("environment", {}).items():
            if SECRET_NAME.search(key):
                assert re.fullmatch(r"\$\{\w+:\?[^}]+\}", value), f"{key} must come from docker/.env"
    assert not any(SECRET_NAME.search(line) for line in dockerfile_instruction("ENV") + dockerfile_instruction("ARG"))
    assert all(value == "change-me" for key, value in ENV_EXAMPLE.items() if SECRET_NAME.search(key))


def test_every_variable_compose_needs_is_in_the_env_example():
    text = (DOCKER / "docker-compose.yml").read_text()
    used = set(re.findall(r"(?<!\$)\$\{(\w+)", text)) - {"V1FABRIK_COMMIT"}  # given at each build, never stale in .env
    assert used <= set(ENV_EXAMPLE), used - set(ENV_EXAMPLE)
    assert "V1FABRIK_COMMIT" not in ENV_EXAMPLE
    assert "#   V1FABRIK_COMMIT=$(git rev-parse --short=12 HEAD) docker compose" in (DOCKER / ".env.example").read_text()


def test_the_real_env_file_is_ignored_and_untracked():
    tracked = subprocess.run(["git", "ls-files", "docker/.env"], cwd=ROOT, capture_output=True, text=True)
    assert tracked.returncode == 0 and tracked.stdout == ""
    ignored = subprocess.run(["git", "check-ignore", "-q", "docker/.env"], cwd=ROOT)
    assert ignored.returncode == 0


def test_workers_read_the_datasets_where_the_notebook_writes_them():
    assert "${DATA_DIR:-../data}:/data:ro" in SERVICES["worker"]["volumes"]
    assert "${DATA_DIR:-../data}:/data" in SERVICES["notebook"]["volumes"]
    assert SERVICES["notebook"]["environment"]["V1FABRIK_NOTEBOOK_DATA"].startswith("/data/")
    assert ENV_EXAMPLE["DATA_DIR"] == "../data"


def test_image_runs_the_torch_the_suite_tests():
    setup = ast.parse((ROOT / "setup.py").read_text())
    requirements = next(node for node in ast.walk(setup) if isinstance(node, ast.keyword) and node.arg == "install_requires")
    torch = next(Requirement(r.value) for r in requirements.value.elts if r.value.startswith("torch"))
    base = re.fullmatch(r"BASE_IMAGE=pytorch/pytorch:(\d+\.\d+\.\d+)-cuda[\d.]+-cudnn\d+-runtime",
                        dockerfile_instruction("ARG")[0])
    assert base and torch.specifier.contains(base.group(1)), (base, torch)
    tested = re.search(r"^TORCH \?= torch==(\S+)$", (ROOT / "Makefile").read_text(), re.MULTILINE)
    assert base.group(1) == tested.group(1), "the image's torch is not the one `make test` installs"
    assert dockerfile_instruction("FROM") == ["${BASE_IMAGE}"]
    (install,) = [line for line in DOCKERFILE.splitlines() if "pip install" in line]
    assert "--constraint /tmp/torch.txt . " in install and "jupyterlab" in install
    assert "print('torch==' + version('torch'))\" > /tmp/torch.txt" in DOCKERFILE


def test_image_runs_as_a_non_root_user():
    assert dockerfile_instruction("USER") == ["v1fabrik"]
    assert DOCKERFILE.index("USER v1fabrik") > DOCKERFILE.index("pip install")


def test_build_context_sends_only_the_package():
    patterns = (DOCKER / "Dockerfile.dockerignore").read_text().split()
    assert patterns[patterns.index("*") + 1:][:4] == ["!setup.py", "!README.md", "!pipeline", "!schemas"]
    copied = {line.split()[0] for line in dockerfile_instruction("COPY")}
    assert copied == {"setup.py", "pipeline", "schemas"}


def test_account_script_grants_the_worker_data_access_only():
    script = (DOCKER / "mysql-init" / "accounts.sh").read_text()
    grants = {user: privileges for privileges, user in re.findall(r"GRANT (.+?) ON \$\{schemas\} TO '(\w+)'@'%'", script)}
    assert grants == {"v1fabrik_admin": "ALL PRIVILEGES", "v1fabrik_worker": "SELECT, INSERT, UPDATE, DELETE"}
    assert "./mysql-init:/docker-entrypoint-initdb.d:ro" in SERVICES["db"]["volumes"]
    assert os.access(DOCKER / "mysql-init" / "accounts.sh", os.X_OK)  # run, not sourced, by the mysql entrypoint


@pytest.mark.parametrize("password", ["", "it's", "back\\slash"])
def test_account_script_refuses_unusable_passwords_before_touching_mysql(password):
    env = {"PATH": os.environ["PATH"], "V1FABRIK_ADMIN_PASSWORD": password, "V1FABRIK_WORKER_PASSWORD": "fine"}
    done = subprocess.run(["bash", str(DOCKER / "mysql-init" / "accounts.sh")], env=env, capture_output=True, text=True)
    assert done.returncode == 1
    assert "set V1FABRIK_ADMIN_PASSWORD in docker/.env" in done.stderr


@pytest.fixture(scope="module")
def build_context(tmp_path_factory):
    """A copy of what the Dockerfile's COPY lines put into the image, outside any git checkout."""
    context = tmp_path_factory.mktemp("context")
    for line in dockerfile_instruction("COPY"):
        for source in line.split()[:-1]:
            if (ROOT / source).is_dir():
                shutil.copytree(ROOT / source, context / source, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copy(ROOT / source, context / source)
    return context


def setup_version(context, commit):
    """``python setup.py --version`` in ``context`` with V1FABRIK_BUILD_COMMIT=``commit``."""
    return subprocess.run([sys.executable, "setup.py", "--version"], cwd=context, capture_output=True, text=True,
                          env={**os.environ, "V1FABRIK_BUILD_COMMIT": commit})


def test_image_passes_the_commit_to_the_package_build():
    assert DOCKERFILE.index("ARG V1FABRIK_COMMIT=unknown") > DOCKERFILE.index("FROM ")  # RUN sees ARGs after FROM only
    (install,) = [line for line in DOCKERFILE.splitlines() if "pip install" in line]
    assert 'V1FABRIK_BUILD_COMMIT="$V1FABRIK_COMMIT" pip install' in install


@pytest.mark.parametrize("commit, version", [
    ("", "0.1.0"),
    (COMMIT, f"0.1.0+g{COMMIT}"),
    (f"{COMMIT}.dirty", f"0.1.0+g{COMMIT}.dirty"),
    ("unknown", "0.1.0+unknown"),
])
def test_package_version_names_the_build_commit(build_context, commit, version):
    done = setup_version(build_context, commit)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[-1] == version == str(Version(version))  # PEP 440, unchanged by normalisation


@pytest.mark.parametrize("commit", ["main", "0123abc; rm -rf /", "0123456789AB"])
def test_package_build_refuses_what_is_not_a_commit(build_context, commit):
    done = setup_version(build_context, commit)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        f"V1FABRIK_BUILD_COMMIT={commit!r} is not a git commit: use $(git rev-parse --short=12 HEAD), "
        "optionally with .dirty, or unknown"]


def test_installed_package_records_the_build_commit(build_context, tmp_path):
    env = {**os.environ, "V1FABRIK_BUILD_COMMIT": COMMIT, "PIP_NO_INPUT": "1"}
    install = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                              "--no-index", "--target", tmp_path / "site", build_context],
                             cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stderr
    read = subprocess.run([sys.executable, "-c", "from importlib.metadata import version; print(version('v1fabrik'))"],
                          cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(tmp_path / "site")},
                          capture_output=True, text=True)
    assert read.stdout.strip() == f"0.1.0+g{COMMIT}", read.stderr
