#!/usr/bin/env bash
# Installs ns8rs on a Debian 12 server with systemd, as root: the OS packages, the
# binaries in /usr/local/bin, the units of deploy/systemd, Redis with one ACL user per
# program (node-agent install), then starts everything and creates the first admin,
# whose generated password it prints once. Running it again updates the binaries, units
# and rules and restarts the services; it never changes a password.
#
#   deploy/install.sh [BIN_DIR]   binaries from BIN_DIR (default: the checkout's
#                                 target/release, built with cargo if missing)
#   deploy/install.sh --packages  print the Debian packages it installs, and exit
set -euo pipefail

# What a node runs on: Redis (the bus), rootless Podman with runc (crun refuses hybrid
# cgroups), slirp4netns and newuidmap (uidmap) for rootless containers, skopeo (module
# images' labels), curl (the API check below). xtask's tests check that this list holds
# what `cargo xtask up` installs for a cluster.
PACKAGES=(redis-server podman runc slirp4netns uidmap skopeo curl jq)
BINARIES=(cluster-agent node-agent module-agent module-service api-cli api-server)
UNITS=(redis.service cluster-agent.service node-agent.service api-server.service)
AGENTS=(cluster-agent.service node-agent.service api-server.service)
ADMIN="admin"
API=http://127.0.0.1:9311
REDIS_PORT=6379
PREFIX=/usr/local/bin
CLUSTER_ENV=/var/lib/nethserver/cluster/state/agent.env

DEPLOY=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CHECKOUT=$(dirname "$DEPLOY")

die() {
    echo "install.sh: $*" >&2
    exit 1
}
step() { echo "==> $*"; }

case "${1:-}" in
--packages)
    echo "${PACKAGES[*]}"
    exit 0
    ;;
-h | --help)
    sed -n '2,10s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"
    exit 0
    ;;
-*) die "unknown option $1 (see --help)" ;;
esac
BIN_DIR=${1:-$CHECKOUT/target/release}

[[ $EUID -eq 0 ]] || die "run as root (it installs packages, units and root-only credentials)"
# shellcheck source=/dev/null
. /etc/os-release
[[ ${ID:-} == debian && ${VERSION_ID:-} == 12 ]] ||
    die "this installer is for Debian 12; this system is ${PRETTY_NAME:-unknown}"
[[ -d /run/systemd/system ]] ||
    die "systemd is not running here (PID 1 is $(cat /proc/1/comm)): on such a machine use 'cargo xtask up', which runs the programs under the supervisor"
for unit in "${UNITS[@]}"; do
    [[ -f $DEPLOY/systemd/$unit ]] || die "$DEPLOY/systemd/$unit is missing: run the deploy/install.sh of a complete checkout"
done
[[ -f $DEPLOY/redis.conf ]] || die "$DEPLOY/redis.conf is missing: run the deploy/install.sh of a complete checkout"

missing_binaries() {
    local b
    for b in "${BINARIES[@]}"; do [[ -x $BIN_DIR/$b ]] || echo "$b"; done
}
if [[ -n $(missing_binaries) ]]; then
    if [[ $# -eq 0 && -f $CHECKOUT/Cargo.toml ]] && command -v cargo >/dev/null; then
        step "Building the release binaries in $CHECKOUT (cargo build --release)"
        args=()
        for b in "${BINARIES[@]}"; do args+=(-p "$b"); done
        (cd "$CHECKOUT" && cargo build --release --quiet "${args[@]}") ||
            die "cargo build --release failed in $CHECKOUT: fix the build, or pass a directory of built binaries"
    fi
    [[ -z $(missing_binaries) ]] ||
        die "no $(missing_binaries | tr '\n' ' ')in $BIN_DIR: build them (cargo build --release) or pass the directory that holds them"
fi

step "Packages: ${PACKAGES[*]}"
missing=()
for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q ' installed$' || missing+=("$p")
done
if [[ ${#missing[@]} -gt 0 ]]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq || die "apt-get update failed: check the network and /etc/apt/sources.list"
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null ||
        die "apt-get could not install ${missing[*]}: see its messages above"
fi

# Debian's own Redis listens on the port ours needs: stopped, and masked so that no
# package upgrade starts it again.
if systemctl cat redis-server.service >/dev/null 2>&1 &&
    [[ $(systemctl is-enabled redis-server.service 2>/dev/null) != masked ]]; then
    step "Stopping and masking Debian's redis-server.service (port $REDIS_PORT is ns8rs's)"
    systemctl disable --now --quiet redis-server.service 2>/dev/null || true
    systemctl mask --quiet redis-server.service || die "cannot mask redis-server.service"
fi
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
if ! systemctl is-active --quiet redis.service && port_open "$REDIS_PORT"; then
    die "port $REDIS_PORT on 127.0.0.1 is in use by another program: stop it (ss -ltnp 'sport = :$REDIS_PORT' names it) and run this again"
fi

installed=()
if [[ -e $CLUSTER_ENV ]]; then
    # An update: stopped first, so that no agent saves the old ACL over the new one.
    installed=(--force)
    step "ns8rs is installed already: updating it (passwords are kept); stopping the agents"
    systemctl stop "${AGENTS[@]}" || die "cannot stop ${AGENTS[*]}: see systemctl status ${AGENTS[*]}"
fi

step "Binaries to $PREFIX: ${BINARIES[*]}"
for b in "${BINARIES[@]}"; do
    # A new file renamed over the old one: a running binary is never written to.
    install -m 0755 "$BIN_DIR/$b" "$PREFIX/.$b.new" || die "cannot copy $BIN_DIR/$b to $PREFIX"
    mv -f "$PREFIX/.$b.new" "$PREFIX/$b"
done

step "Units to /etc/systemd/system, Redis's configuration to /etc/ns8rs"
install -m 0644 "$DEPLOY"/systemd/*.service /etc/systemd/system/
install -d -m 0700 /etc/ns8rs
install -m 0644 "$DEPLOY/redis.conf" /etc/ns8rs/redis.conf

step "Credentials and Redis users (node-agent install)"
"$PREFIX/node-agent" install "${installed[@]}" ||
    die "node-agent install failed: see its message above (nothing of ns8rs is started until this succeeds)"

step "Starting ${UNITS[*]}"
systemctl daemon-reload
systemctl enable --quiet "${UNITS[@]}" || die "cannot enable ${UNITS[*]}"
systemctl restart "${UNITS[@]}" || die "cannot start ${UNITS[*]}: see systemctl status ${UNITS[*]}"

# Up means: each agent connected as its own Redis user under its own name (what api-cli
# checks before sending a task), and the API answering.
cluster_password=$(sed -n 's/^REDIS_PASSWORD=//p' "$CLUSTER_ENV")
clients() { REDISCLI_AUTH=$cluster_password redis-cli -p "$REDIS_PORT" --user cluster CLIENT LIST 2>/dev/null; }
connected() { clients | grep -q "name=$1 .* user=$1 "; }
api_up() { [[ $(curl -s -o /dev/null -w '%{http_code}' "$API/api/openapi.json") == 200 ]]; }
deadline=$((SECONDS + 90))
until connected cluster && connected node/1 && api_up; do
    if ((SECONDS > deadline)); then
        for unit in "${UNITS[@]}"; do
            systemctl --no-pager status "$unit" >&2 || true
        done
        connected cluster || echo "the cluster agent is not connected to Redis" >&2
        connected node/1 || echo "the node agent is not connected to Redis" >&2
        api_up || echo "the API does not answer on $API" >&2
        die "ns8rs did not come up within 90 s: see the status above and journalctl -u <unit>"
    fi
    sleep 0.5
done
unset cluster_password

step "The first admin"
# The password goes from api-server's stdout to the terminal only: no file, no journal.
password=$("$PREFIX/api-server" add-user "$ADMIN" --if-missing --grant owner:cluster --grant owner:node/1) ||
    die "cannot create the admin user: see the message above"

echo
echo "ns8rs is running: Redis on 127.0.0.1:$REDIS_PORT, agents cluster and node/1, API on $API."
echo
if [[ -n $password ]]; then
    echo "  Admin user \"$ADMIN\", password (shown only this once, store it safely): $password"
else
    echo "  Admin user \"$ADMIN\" exists already. Lost its password? $PREFIX/api-server set-password $ADMIN"
fi
unset password
cat <<EOF

  Log in and run a task through the API:
    api-cli login --endpoint $API --username $ADMIN
    api-cli run get-info --agent node/1 --endpoint $API
  Or, as root, straight through Redis as the cluster agent:
    api-cli run get-info --agent node/1
  Services: systemctl status ${UNITS[*]}
EOF
