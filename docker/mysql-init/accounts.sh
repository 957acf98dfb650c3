#!/bin/bash
# Runs once, when the mysql image initialises an empty data volume. Creates the least-privilege
# accounts the compose services use; passwords come from docker/.env, never from this file.
set -euo pipefail

for name in V1FABRIK_ADMIN_PASSWORD V1FABRIK_WORKER_PASSWORD; do
    value="${!name:-}"
    if [[ -z "$value" || "$value" == *"'"* || "$value" == *\\* ]]; then
        echo "accounts.sh: set $name in docker/.env (non-empty, without ' or \\)" >&2
        exit 1
    fi
done
prefix="${V1FABRIK_SCHEMA_PREFIX:-v1fabrik_}"
schemas="\`${prefix//_/\\_}%\`.*"  # v1fabrik_ -> `v1fabrik\_%`.* (a literal underscore in a GRANT pattern)

MYSQL_PWD="$MYSQL_ROOT_PASSWORD" mysql --protocol=socket -uroot <<SQL
CREATE USER IF NOT EXISTS 'v1fabrik_admin'@'%' IDENTIFIED BY '${V1FABRIK_ADMIN_PASSWORD}';
GRANT ALL PRIVILEGES ON ${schemas} TO 'v1fabrik_admin'@'%';
CREATE USER IF NOT EXISTS 'v1fabrik_worker'@'%' IDENTIFIED BY '${V1FABRIK_WORKER_PASSWORD}';
GRANT SELECT, INSERT, UPDATE, DELETE ON ${schemas} TO 'v1fabrik_worker'@'%';
SQL
echo "accounts.sh: created v1fabrik_admin and v1fabrik_worker on ${schemas}"
