#!/usr/bin/env bash
# Installs ns8rs on a Debian 12 server with systemd, as root: the OS packages, the
# binaries in /usr/local/bin, the units of deploy/systemd, Redis with one ACL user per
# program (node-agent install), then starts everything and creates the first admin,
# whose generated password it prints once, and the node's edge proxy (traefik1) from a
# module repository. Running it again updates the binaries, units and rules and
# restarts the services; it never changes a password or the proxy's routes.
#
#   deploy/install.sh [OPTIONS] [BIN_DIR]
#       BIN_DIR              binaries from here (default: the checkout's target/release,
#                            built with cargo if missing)
#       --repository URL     the module repository (its repodata.json is under URL:
#                            https:// or file://) the edge proxy is installed from
#       --http-port N        the edge proxy's HTTP port (default 80)
#       --https-port N       its HTTPS port (default 443)
#   deploy/install.sh --packages  print the Debian packages it installs, and exit
set -euo pipefail

# What a node runs on: Redis (the bus), rootless Podman with runc (crun refuses hybrid
# cgroups), slirp4netns and newuidmap (uidmap) for rootless containers, skopeo (module
# images' labels), curl (the API check below). xtask's tests check that this list holds
# what `cargo xtask up` installs for a cluster.
PACKAGES=(redis-server podman runc slirp4netns uidmap skopeo curl jq restic rclone)
BINARIES=(cluster-agent node-agent module-agent module-service api-cli api-server)
UNITS=(redis.service cluster-agent.service node-agent.service api-server.service)
AGENTS=(cluster-agent.service node-agent.service api-server.service)
ADMIN="admin"
API=http://127.0.0.1:9311
REDIS_PORT=6379
PREFIX=/usr/local/bin
CLUSTER_ENV=/var/lib/nethserver/cluster/state/agent.env
# The secret the edge proxy's cluster-admin route sends the api-server, so that the
# api-server believes its X-Forwarded-For (and nobody else's): the api-server makes it
# at first start in its state directory (its unit's PROXY_TOKEN_FILE).
PROXY_TOKEN=/var/lib/ns8rs/api-server/proxy-token
REPOSITORY_NAME=ns8rs
UNPRIVILEGED_PORTS=/etc/sysctl.d/60-ns8rs-unprivileged-ports.conf

DEPLOY=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CHECKOUT=$(dirname "$DEPLOY")

die() {
    echo "install.sh: $*" >&2
    exit 1
}
step() { echo "==> $*"; }

REPOSITORY=""
HTTP_PORT=80
HTTPS_PORT=443
BIN_DIR=""
port_arg() {
    [[ $2 =~ ^[0-9]{1,5}$ ]] && (($2 >= 1 && $2 <= 65535)) || die "$1 takes a port (1-65535), not '$2'"
}
while [[ $# -gt 0 ]]; do
    case "$1" in
    --packages)
        echo "${PACKAGES[*]}"
        exit 0
        ;;
    -h | --help)
        sed -n '2,18s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"
        exit 0
        ;;
    --repository)
        [[ ${2:-} =~ ^(https?|file)://[^[:space:]]+$ ]] ||
            die "--repository takes a URL (https://... or file:///...), not '${2:-}'"
        REPOSITORY=$2
        shift 2
        ;;
    --http-port | --https-port)
        port_arg "$1" "${2:-}"
        if [[ $1 == --http-port ]]; then HTTP_PORT=$2; else HTTPS_PORT=$2; fi
        shift 2
        ;;
    -*) die "unknown option $1 (see --help)" ;;
    *)
        [[ -z $BIN_DIR ]] || die "one binary directory only (got $BIN_DIR and $1)"
        BIN_DIR=$1
        shift
        ;;
    esac
done
[[ $HTTP_PORT != "$HTTPS_PORT" ]] || die "--http-port and --https-port must differ (both $HTTP_PORT)"
GIVEN_BIN_DIR=$BIN_DIR
BIN_DIR=${BIN_DIR:-$CHECKOUT/target/release}

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
    if [[ -z $GIVEN_BIN_DIR && -f $CHECKOUT/Cargo.toml ]] && command -v cargo >/dev/null; then
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

# The edge proxy: traefik on node 1, from the module repository, listening on the
# HTTP(S) ports, with the api-server behind it at /cluster-admin/ (NS8's route).
cluster_redis() { REDISCLI_AUTH=$(sed -n 's/^REDIS_PASSWORD=//p' "$CLUSTER_ENV") redis-cli -p "$REDIS_PORT" --user cluster --no-auth-warning "$@"; }
# The data through stdin: the route's token never shows in the process list.
run() {
    local action=$1 agent=$2 data=$3 out
    out=$(printf '%s' "$data" | "$PREFIX/api-cli" run "$action" --agent "$agent" --data -) ||
        die "$action on $agent failed: ${out:-see the message above}"
    printf '%s' "$out"
}
proxy=$(cluster_redis GET node/1/default_instance/traefik)
if [[ -z $proxy && -n $REPOSITORY ]] && [[ $(cluster_redis EXISTS "cluster/repository/$REPOSITORY_NAME") == 0 ]]; then
    step "The module repository $REPOSITORY_NAME: $REPOSITORY"
    run add-repository cluster "$(jq -nc --arg n "$REPOSITORY_NAME" --arg u "$REPOSITORY" '{name: $n, url: $u}')" >/dev/null
fi
if [[ -z $proxy && -z $REPOSITORY && -z $(cluster_redis KEYS 'cluster/repository/*') ]]; then
    proxy_note="  No edge proxy: no module repository was given. Run this again with --repository URL
  to install it (traefik1 on ports $HTTP_PORT and $HTTPS_PORT, the API at /cluster-admin/)."
else
    if [[ -z $proxy ]]; then
        step "The edge proxy: installing traefik on node 1"
        proxy=$(run add-module cluster '{"image": "traefik", "node": 1}' | jq -r .module_id)
        [[ $proxy =~ ^traefik[0-9]+$ ]] || die "add-module traefik answered no module id"
    fi
    step "The edge proxy $proxy: ports $HTTP_PORT and $HTTPS_PORT, the API at /cluster-admin/"
    # A rootless Traefik binds ports below 1024 only if unprivileged users may (as NS8
    # does); kept across reboots, never raised.
    low=$((HTTP_PORT < HTTPS_PORT ? HTTP_PORT : HTTPS_PORT))
    knob=/proc/sys/net/ipv4/ip_unprivileged_port_start
    current=$(cat "$knob") || die "cannot read $knob"
    if ((low < current)); then
        echo "net.ipv4.ip_unprivileged_port_start = $low" >"$UNPRIVILEGED_PORTS"
        echo "$low" >"$knob" || die "cannot set net.ipv4.ip_unprivileged_port_start to $low"
    fi
    run configure-module "module/$proxy" "$(jq -nc --argjson h "$HTTP_PORT" --argjson s "$HTTPS_PORT" \
        '{http_port: $h, https_port: $s}')" >/dev/null
    [[ -s $PROXY_TOKEN ]] || die "the api-server made no proxy token in $PROXY_TOKEN (see journalctl -u api-server)"
    route=$(jq -nc --arg u "${API#http://}" --rawfile t "$PROXY_TOKEN" '{instance: "cluster-admin",
        url: ("http://" + $u), path: "/cluster-admin", strip_prefix: true, http2https: true,
        headers: {request: {"X-Ns8rs-Proxy-Token": $t}}}')
    run set-route "module/$proxy" "$route" >/dev/null
    unset route
    proxy_note="  Edge proxy $proxy: http://<this server>:$HTTP_PORT/ and https://<this server>:$HTTPS_PORT/,
  the API at https://<this server>:$HTTPS_PORT/cluster-admin/api/ (a self-signed certificate
  until you set one: api-cli run set-certificate --agent module/$proxy ...)."
fi

echo
echo "ns8rs is running: Redis on 127.0.0.1:$REDIS_PORT, agents cluster and node/1, API on $API."
echo
echo "$proxy_note"
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
