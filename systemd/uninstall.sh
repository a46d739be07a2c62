#!/usr/bin/env bash
# Remove the sshreg service: stop and disable it, remove the unit, the venv and the command.
# Keeps /etc/sshreg (config, secrets), /var/lib/sshreg (keys, host key, data) and the sshreg
# user, unless --purge is given, which removes them too.
#
#   sudo systemd/uninstall.sh            # keep config and data
#   sudo systemd/uninstall.sh --purge    # remove everything, data included
set -euo pipefail

PREFIX=/opt/sshreg
VENV=$PREFIX/venv
CONF_DIR=/etc/sshreg
STATE=/var/lib/sshreg
UNIT_DIR=/etc/systemd/system
LINK=/usr/local/bin/sshreg
SERVICE_USER=sshreg
PURGE=no

say() { printf '==> %s\n' "$*"; }

while [ $# -gt 0 ]; do
    case $1 in
        --purge) PURGE=yes; shift ;;
        -h|--help) sed -n '2,8s/^# \{0,1\}//p' "$0"; exit 0 ;;
        *) printf 'uninstall.sh: unknown argument %s\n' "$1" >&2; exit 2 ;;
    esac
done

[ "$(id -u)" -eq 0 ] || { echo "uninstall.sh: run as root (sudo $0)" >&2; exit 1; }

if [ -d /run/systemd/system ]; then
    say "stopping and disabling sshreg"
    systemctl disable --now sshreg-gc.timer sshreg.service 2>/dev/null || true
fi
say "removing the unit, $PREFIX and $LINK"
rm -f "$UNIT_DIR/sshreg.service" "$UNIT_DIR/sshreg-gc.service" "$UNIT_DIR/sshreg-gc.timer"
[ "$PURGE" = no ] || rm -rf "$UNIT_DIR/sshreg.service.d"
if [ -d /run/systemd/system ]; then systemctl daemon-reload; fi
rm -rf "$PREFIX"
if [ -L "$LINK" ] && [ "$(readlink "$LINK")" = "$VENV/bin/sshreg" ]; then
    rm -f "$LINK"
fi

if [ "$PURGE" = no ]; then
    say "kept $CONF_DIR (config, secrets), $STATE (keys, host key, data) and user $SERVICE_USER;"
    say "remove them with: $0 --purge"
    exit 0
fi
say "purging $CONF_DIR, $STATE and user $SERVICE_USER"
rm -rf "$CONF_DIR" "$STATE"
if getent passwd "$SERVICE_USER" >/dev/null; then
    userdel "$SERVICE_USER"
fi
if getent group "$SERVICE_USER" >/dev/null; then
    groupdel "$SERVICE_USER"
fi
