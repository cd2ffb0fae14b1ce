#!/usr/bin/env bash
# Install dispersiond as a hardened systemd service. Run as root from a checkout:
#   sudo deploy/install.sh
# or, on a device without network, from this deploy/ folder and a wheelhouse (the
# project's wheel and its dependencies' wheels, made elsewhere with `pip wheel -w DIR .`
# for the device's Python):
#   sudo WHEELHOUSE=/media/usb/wheels deploy/install.sh
# Safe to run again (upgrades the package, never overwrites a config or a key).
# DESTDIR=/some/root stages the files only (no user, no chown, no systemctl): for packaging.
set -euo pipefail
DEPLOY=$(cd "$(dirname "$0")" && pwd)
SRC=$(cd "$DEPLOY/.." && pwd)
DESTDIR=${DESTDIR:-}
PREFIX=${PREFIX:-/opt/dispersiond}
PYTHON=${PYTHON:-python3}
WHEELHOUSE=${WHEELHOUSE:-}
BIN_DIR=$DESTDIR/usr/local/bin
COMPLETIONS=$DESTDIR/usr/share/bash-completion/completions
USER_NAME=dispersiond
CONF=$DESTDIR/etc/dispersiond
DATA=$DESTDIR/var/lib/dispersiond
UNIT_DIR=$DESTDIR/etc/systemd/system
staging() { [ -n "$DESTDIR" ]; }
own() { staging || chown "$@"; }

if ! staging; then
  [ "$(id -u)" = 0 ] || { echo "install.sh: run as root (or set DESTDIR to stage files)" >&2; exit 1; }
  if ! id "$USER_NAME" >/dev/null 2>&1; then
    useradd --system --user-group --home-dir /var/lib/dispersiond --no-create-home \
            --shell /usr/sbin/nologin --comment "dispersiond service" "$USER_NAME"
  fi
fi

VENV=$DESTDIR$PREFIX/venv
if [ "${SKIP_VENV:-0}" != 1 ]; then
  "$PYTHON" -m venv "$VENV" || {
    echo "install.sh: cannot create a venv with $PYTHON (on Debian: apt-get install python3-venv)" >&2
    exit 1; }
  if [ -n "$WHEELHOUSE" ]; then  # offline: only what the wheelhouse holds
    [ -d "$WHEELHOUSE" ] || { echo "install.sh: WHEELHOUSE=$WHEELHOUSE is not a folder" >&2; exit 1; }
    "$VENV/bin/pip" install --quiet --no-index --find-links "$WHEELHOUSE" --upgrade dispersiond
  else
    [ -f "$SRC/pyproject.toml" ] || {
      echo "install.sh: no checkout around $DEPLOY: set WHEELHOUSE to a folder of wheels" >&2
      exit 1; }
    "$VENV/bin/pip" install --quiet --upgrade pip
    "$VENV/bin/pip" install --quiet "$SRC"
  fi
  # Operators type `dispersiond ...`; bash completes its commands and options.
  install -d -m 0755 "$BIN_DIR" "$COMPLETIONS"
  ln -sfn "$PREFIX/venv/bin/dispersiond" "$BIN_DIR/dispersiond"
  "$VENV/bin/register-python-argcomplete" dispersiond > "$COMPLETIONS/dispersiond"
  chmod 0644 "$COMPLETIONS/dispersiond"
fi

install -d -m 0750 "$CONF"
own root:"$USER_NAME" "$CONF"
if [ ! -e "$CONF/dispersiond.yaml" ]; then
  install -m 0640 "$DEPLOY/dispersiond.yaml" "$CONF/dispersiond.yaml"
  own root:"$USER_NAME" "$CONF/dispersiond.yaml"
fi
if [ ! -e "$CONF/master.key" ]; then
  (umask 077; head -c 32 /dev/urandom > "$CONF/master.key")
  chmod 0400 "$CONF/master.key"
  own "$USER_NAME:$USER_NAME" "$CONF/master.key"
  echo "install.sh: wrote a new master key $CONF/master.key: back it up offline now"
fi
# One writable tree: state and inbox side by side, so a claim is a rename.
install -d -m 0711 "$DATA"
install -d -m 0700 "$DATA/state" "$DATA/stores"
install -d -m 2770 "$DATA/inbox"
# Metrics for node_exporter's textfile collector: readable by its user, nothing else here.
install -d -m 0755 "$DATA/metrics"
own "$USER_NAME:$USER_NAME" "$DATA" "$DATA/state" "$DATA/stores" "$DATA/inbox" "$DATA/metrics"
install -d -m 0755 "$UNIT_DIR"
install -m 0644 "$DEPLOY/dispersiond.service" "$UNIT_DIR/dispersiond.service"

if ! staging; then
  systemctl daemon-reload
  cat <<MSG
dispersiond is installed. Next:
  1. edit $CONF/dispersiond.yaml (stores; cloud credentials go in $CONF/env, mode 0600)
  2. systemctl enable --now dispersiond
  3. systemctl status dispersiond; sudo -u $USER_NAME dispersiond -c $CONF/dispersiond.yaml status
Producers write into /var/lib/dispersiond/inbox (add them to group $USER_NAME).
MSG
fi
