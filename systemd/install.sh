#!/usr/bin/env bash
# Install (or upgrade) sshreg as a systemd service on Debian / Raspberry Pi OS.
# Safe to run again: it keeps the config, the secrets, the keys and the data.
#
#   sudo systemd/install.sh                       # from this checkout
#   sudo systemd/install.sh --from sshreg==0.1.0  # or anything pip accepts: a wheel, a path
#   sudo systemd/install.sh --listen 0.0.0.0:22   # port of a *new* config (default 2222)
#   sudo systemd/install.sh --no-start            # no systemctl (containers, image builds)
#   sudo systemd/install.sh --python /usr/bin/python3.12   # another interpreter (3.11+)
set -euo pipefail

PREFIX=/opt/sshreg
VENV=$PREFIX/venv
CONF_DIR=/etc/sshreg
CONFIG=$CONF_DIR/config.toml
SECRETS=$CONF_DIR/secrets.env
STATE=/var/lib/sshreg
UNIT_DIR=/etc/systemd/system
LINK=/usr/local/bin/sshreg
SERVICE_USER=sshreg
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

PYTHON=/usr/bin/python3
FROM=""
LISTEN=0.0.0.0:2222
START=yes

usage() { sed -n '2,9s/^# \{0,1\}//p' "$0"; exit "${1:-0}"; }
say() { printf '==> %s\n' "$*"; }
die() { printf 'install.sh: %s\n' "$*" >&2; exit 1; }

while [ $# -gt 0 ]; do
    case $1 in
        --from) FROM=${2:?--from needs a value}; shift 2 ;;
        --listen) LISTEN=${2:?--listen needs HOST:PORT}; shift 2 ;;
        --python) PYTHON=${2:?--python needs a path}; shift 2 ;;
        --no-start) START=no; shift ;;
        -h|--help) usage 0 ;;
        *) printf 'install.sh: unknown argument %s\n' "$1" >&2; usage 2 ;;
    esac
done

[ "$(id -u)" -eq 0 ] || die "run as root (sudo $0)"
umask 022

check_python() {
    [ -x "$PYTHON" ] || die "$PYTHON not found: apt-get install python3"
    "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
        || die "sshreg needs Python 3.11 or later (Debian 12 / Raspberry Pi OS bookworm); $PYTHON is older"
    if ! "$PYTHON" -c 'import ensurepip, venv' 2>/dev/null; then
        command -v apt-get >/dev/null || die "$PYTHON has no venv module"
        say "installing python3-venv"
        apt-get update && apt-get install -y python3-venv
    fi
}

create_user() {
    if getent passwd "$SERVICE_USER" >/dev/null; then
        return
    fi
    say "creating system user $SERVICE_USER"
    local group=(--user-group)
    getent group "$SERVICE_USER" >/dev/null && group=(--gid "$SERVICE_USER")
    useradd --system "${group[@]}" --home-dir "$STATE" --no-create-home \
        --shell /usr/sbin/nologin --comment "sshreg container registry" "$SERVICE_USER"
}

create_dirs() {
    install -d -m 0755 -o root -g root "$CONF_DIR" "$PREFIX"
    install -d -m 0700 -o "$SERVICE_USER" -g "$SERVICE_USER" "$STATE" "$STATE/keys" "$STATE/data"
}

# A copy of just what a wheel is built from, so pip writes nothing into the checkout.
source_copy() {
    local src=$HERE/.. dest=$1
    [ -f "$src/pyproject.toml" ] || die "no checkout around $HERE: use --from SPEC"
    mkdir -p "$dest"
    cp -r "$src/pyproject.toml" "$src/README.md" "$src/sshreg" "$dest/"
    find "$dest" -name __pycache__ -prune -exec rm -rf {} +
}

install_package() {
    if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
        say "creating $VENV"
        rm -rf "$VENV"
        "$PYTHON" -m venv "$VENV"
    fi
    local spec=$FROM tmp=""
    if [ -z "$spec" ]; then
        tmp=$(mktemp -d)
        source_copy "$tmp/sshreg-src"
        spec=$tmp/sshreg-src
    fi
    say "installing sshreg from ${FROM:-$(cd "$HERE/.." && pwd)}"
    # --force-reinstall --no-deps: same version number, new code (an upgrade from a checkout).
    "$VENV/bin/pip" install --disable-pip-version-check --quiet "$spec"
    "$VENV/bin/pip" install --disable-pip-version-check --quiet --force-reinstall --no-deps "$spec"
    [ -z "$tmp" ] || rm -rf "$tmp"
    "$VENV/bin/sshreg" --help >/dev/null
    if [ ! -e "$LINK" ] || [ "$(readlink "$LINK")" = "$VENV/bin/sshreg" ]; then
        ln -sfn "$VENV/bin/sshreg" "$LINK"
    else
        say "leaving $LINK alone (not ours); the command is $VENV/bin/sshreg"
    fi
}

write_config() {
    if [ -e "$CONFIG" ]; then
        say "keeping $CONFIG"
    else
        say "writing $CONFIG"
        cat >"$CONFIG" <<EOF
# sshreg configuration. Every key with its default: sshreg/config.py (or the README).
# Check it with: sudo -u $SERVICE_USER $VENV/bin/sshreg check-config --config $CONFIG

[server]
listen = "$LISTEN"
keys = "$STATE/keys"

[storage]
url = "$STATE/data"
# R2 / S3 instead (credentials go into $SECRETS, never here):
# url = "s3://my-bucket/registry"
# endpoint_url = "https://ACCOUNT_ID.r2.cloudflarestorage.com"

[log]
level = "info"
format = "text"
EOF
        chmod 0644 "$CONFIG"
    fi
    if [ ! -e "$SECRETS" ]; then
        say "writing $SECRETS (root only)"
        (umask 077 && cat >"$SECRETS" <<'EOF'
# Secrets for R2 / S3 storage, read by systemd (as root) when sshreg starts.
# AWS_ACCESS_KEY_ID=...
# AWS_SECRET_ACCESS_KEY=...
EOF
        )
    fi
    chown root:root "$SECRETS"
    chmod 0600 "$SECRETS"
}

install_units() {
    for unit in sshreg.service sshreg-gc.service sshreg-gc.timer; do
        say "installing $UNIT_DIR/$unit"
        install -m 0644 -o root -g root "$HERE/$unit" "$UNIT_DIR/$unit"
    done
}

# The config as the service will see it: its user, folder, umask and secrets.
check_config() {
    say "checking the configuration as $SERVICE_USER"
    (
        set -a
        # shellcheck disable=SC1090
        . "$SECRETS"
        set +a
        cd "$STATE"
        umask 077
        runuser -u "$SERVICE_USER" -- "$VENV/bin/sshreg" check-config --config "$CONFIG"
    ) || die "the configuration has problems (above): fix $CONFIG, then run $0 again"
}

start_service() {
    if [ "$START" = no ]; then
        say "--no-start: not touching systemd; start it later with: systemctl enable --now sshreg sshreg-gc.timer"
        return
    fi
    if [ ! -d /run/systemd/system ]; then
        say "systemd is not running here: not starting the service"
        return
    fi
    systemctl daemon-reload
    systemctl enable sshreg.service sshreg-gc.timer
    systemctl start sshreg-gc.timer
    say "(re)starting sshreg"
    systemctl restart sshreg.service
    systemctl --no-pager --lines=5 status sshreg.service || true
}

show_host_key() {
    local pub=$STATE/keys/ssh_host_ed25519_key.pub
    [ -f "$pub" ] && command -v ssh-keygen >/dev/null && say "host key: $(ssh-keygen -l -f "$pub")"
    return 0
}

check_python
create_user
create_dirs
install_package
write_config
install_units
check_config
start_service
show_host_key
port=$(sed -n 's/^listen *= *"[^"]*:\([0-9]*\)".*/\1/p' "$CONFIG" | head -n 1)
cat <<EOF

sshreg is installed. Next:
  sudo sshreg keys add --config $CONFIG ~/.ssh/id_ed25519.pub    # who may log in
  ssh -p ${port:-2222} -N -L 5000:localhost:80 THIS_HOST    # on your machine: the tunnel
  journalctl -u sshreg -f    # the log
EOF
