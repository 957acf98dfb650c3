# The two commands of the README. Both do every setup step on a fresh Debian machine (as root):
# a virtual environment in .venv, the package with its test extras, and the private database.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
V1FABRIK := $(VENV)/bin/v1fabrik
STAMP := $(VENV)/.v1fabrik-installed
# The CPU wheel on this machine. Elsewhere, e.g.: make TORCH_INDEX=https://download.pytorch.org/whl/cpu
TORCH ?= torch==2.13.0
TORCH_INDEX ?=
PYTEST_ARGS ?=
APT_INSTALL := DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends

.PHONY: demo test test-postgresql install

install: $(STAMP)

$(PY):
	@command -v $(PYTHON) >/dev/null || { apt-get update -q && $(APT_INSTALL) python3 python3-venv; }
	@$(PYTHON) -m venv $(VENV) || { rm -rf $(VENV); \
	  $(APT_INSTALL) python3-venv || { apt-get update -q && $(APT_INSTALL) python3-venv; }; \
	  $(PYTHON) -m venv $(VENV); }

# torch first and pinned, so that resolving the package never pulls a multi-GB CUDA build.
# The dashboard's browser tests drive Debian's Chromium through its chromedriver.
$(STAMP): setup.py | $(PY)
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	  $(APT_INSTALL) chromium chromium-driver || { apt-get update -q && $(APT_INSTALL) chromium chromium-driver; }
	$(PY) -m pip install -q "$(TORCH)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(PY) -m pip install -q -e '.[test,postgres]'
	@touch $@

# Synthetic data, the seed notebook's model, 2 seeds on 2 CPU workers, scores and figures (schemas/cli/demo.py).
demo: $(STAMP)
	@[ -n "$$DJ_HOST" ] || $(V1FABRIK) db up
	$(PY) -m schemas.cli.demo --out demo_output

# The whole suite against the real server; stops the server it started (by pid), pass or fail.
test: $(STAMP)
	@started=; \
	stop() { if [ -n "$$started" ]; then $(V1FABRIK) db down --backend mariadb; fi; }; \
	trap stop EXIT; \
	if [ -z "$$DJ_HOST" ] && ! $(V1FABRIK) db status --backend mariadb >/dev/null; then \
	  $(V1FABRIK) db up || exit 1; started=1; \
	fi; \
	$(PY) -m pytest $(PYTEST_ARGS)

# The database tests (-m db) again, on a private PostgreSQL server started in a temporary folder and
# stopped afterwards. Its settings reach the tests as DJ_* variables, which take precedence over the
# MariaDB datajoint.json here. PG_PORT picks its port (default 5433).
test-postgresql: $(STAMP)
	@home="$$(mktemp -d /tmp/v1fabrik-postgresql-XXXXXX)"; chmod 755 "$$home"; \
	v1fabrik() { (cd "$$home" && env -u DJ_HOST V1FABRIK_HOME="$$home" DJ_PORT="$${PG_PORT:-5433}" "$(CURDIR)/$(V1FABRIK)" "$$@"); }; \
	stop() { v1fabrik db down --backend postgresql; rm -rf "$$home"; }; \
	trap stop EXIT; \
	v1fabrik db up --backend postgresql || exit 1; \
	DJ_HOST=127.0.0.1 DJ_PORT="$${PG_PORT:-5433}" DJ_BACKEND=postgresql \
	DJ_USER="$$(cat "$$home/.secrets/database.user")" DJ_PASS="$$(cat "$$home/.secrets/database.password")" \
	$(PY) -m pytest -m db $(PYTEST_ARGS)
