#!/bin/sh
# Install the TrueConf Calendar Connector on one Linux machine under systemd, without containers
# (deploy/README.md, "systemd"). Run from a checkout of the repository, as root:
#
#   deploy/systemd/install.sh install        the services into a venv, /etc/trueconf-calendar, the NATS users,
#                                            the systemd units; then prints what is left to do
#   deploy/systemd/install.sh render DIR     only render the units and NATS files into DIR (to review them;
#                                            tests/deploy/test_deploy_systemd.py verifies them with systemd-analyze)
#
# Settings (environment): PREFIX (/opt/trueconf-calendar: the venv), CONFDIR (/etc/trueconf-calendar),
# SERVICE_USER (tccal), UNIT_DIR (/etc/systemd/system), PYTHON (python3.11), BIN_DIR (/usr/local/bin: the
# tc-calendar and tc_calendar commands for administrators), NATS_UNIT, NATS_BINARY and NATS_STORE_DIR (Debian's NATS
# server: nats-server.service, /usr/sbin/nats-server, /var/lib/nats/jetstream).
# Running it again upgrades the installed packages and keeps the machine key, the NATS passwords and config.json.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
source_dir=$(cd "$here/../.." && pwd)
PREFIX=${PREFIX:-/opt/trueconf-calendar}
CONFDIR=${CONFDIR:-/etc/trueconf-calendar}
SERVICE_USER=${SERVICE_USER:-tccal}
UNIT_DIR=${UNIT_DIR:-/etc/systemd/system}
PYTHON=${PYTHON:-python3.11}
BIN_DIR=${BIN_DIR:-/usr/local/bin}
NATS_UNIT=${NATS_UNIT:-nats-server.service}
NATS_BINARY=${NATS_BINARY:-/usr/sbin/nats-server}
NATS_STORE_DIR=${NATS_STORE_DIR:-/var/lib/nats/jetstream}  # within /var/lib/nats, the drop-in's StateDirectory
POSTGRES_UNIT=${POSTGRES_UNIT:-postgresql.service}
IDENTITIES="ews-ingest sync-engine tcs-gateway licensing graph-ingest admin"  # tccal.nats_auth.IDENTITIES

# name|module|what it does|units it is ordered after and wants (besides network-online.target). graph-ingest is
# optional (config.json entries of "type": "graph"): in trueconf-calendar.target only once enabled.
SERVICES="licensing|licensing|registration, the license in force, seats for mailboxes|$POSTGRES_UNIT $NATS_UNIT
sync-engine|sync_engine|reconciles calendar changes in PostgreSQL|$POSTGRES_UNIT $NATS_UNIT trueconf-calendar-licensing.service
ews-ingest|ews_ingest|reads Exchange calendars over EWS|$NATS_UNIT trueconf-calendar-licensing.service
tcs-gateway|tcs_gateway|the calendar bridge to TrueConf Server|$NATS_UNIT trueconf-calendar-licensing.service trueconf-calendar-sync-engine.service
graph-ingest|graph_ingest|reads Exchange Online calendars through Microsoft Graph|$NATS_UNIT trueconf-calendar-licensing.service"

die() {
  echo "install.sh: $*" >&2
  exit 1
}

substitute() {  # substitute TEMPLATE > OUT, with the service's fields in NAME MODULE DESCRIPTION DEPENDS
  sed -e "s|@PREFIX@|$PREFIX|g" -e "s|@CONFDIR@|$CONFDIR|g" -e "s|@USER@|$SERVICE_USER|g" \
    -e "s|@NATS_UNIT@|$NATS_UNIT|g" -e "s|@NATS_BINARY@|$NATS_BINARY|g" -e "s|@NATS_STORE_DIR@|$NATS_STORE_DIR|g" \
    -e "s|@UNIT@|trueconf-calendar-${NAME:-}.service|g" -e "s|@NAME@|${NAME:-}|g" -e "s|@MODULE@|${MODULE:-}|g" \
    -e "s|@DESCRIPTION@|${DESCRIPTION:-}|g" -e "s|@AFTER@|${DEPENDS:-}|g" -e "s|@WANTS@|${DEPENDS:-}|g" "$1"
}

render() {  # render DIR: the units into DIR, the NATS files into DIR/nats
  out=$1
  mkdir -p "$out/nats" "$out/$NATS_UNIT.d"
  substitute "$here/trueconf-calendar.service.in" > "$out/trueconf-calendar.service"
  substitute "$here/trueconf-calendar.target.in" > "$out/trueconf-calendar.target"
  printf '%s\n' "$SERVICES" | while IFS='|' read -r NAME MODULE DESCRIPTION DEPENDS; do
    substitute "$here/service.in" > "$out/trueconf-calendar-$NAME.service"
  done
  substitute "$here/nats-drop-in.conf.in" > "$out/$NATS_UNIT.d/trueconf-calendar.conf"
  substitute "$here/nats.conf.in" > "$out/nats/nats.conf"
}

random_password() {
  head -c 48 /dev/urandom | base64 | tr -d '/+=\n' | cut -c1-32
}

install_packages() {
  command -v "$PYTHON" >/dev/null || die "$PYTHON is needed (Debian 12: apt-get install python3.11 python3.11-venv)"
  [ -x "$PREFIX/bin/python" ] || "$PYTHON" -m venv "$PREFIX"
  set -- "$source_dir/proto" "$source_dir/libs/tccal" "$source_dir/services/licensing" \
    "$source_dir/services/sync-engine" "$source_dir/services/ews-ingest" "$source_dir/services/tcs-gateway" \
    "$source_dir/services/graph-ingest"
  # every version pinned by constraints.txt; then our packages again, so an upgrade at the same version number
  # (a newer checkout) replaces them too
  "$PREFIX/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade \
    --constraint "$source_dir/constraints.txt" "$@"
  "$PREFIX/bin/python" -m pip install --quiet --disable-pip-version-check --force-reinstall --no-deps \
    --constraint "$source_dir/constraints.txt" "$@"
  install -D -m 0644 "$source_dir/deploy/README.md" "$PREFIX/share/trueconf-calendar/README.md"
  for command in tc-calendar tc_calendar; do  # the CLI with this installation's config, key and NATS identity
    cat > "$BIN_DIR/$command" <<EOF
#!/bin/sh
: "\${TC_CALENDAR_CONFIG:=$CONFDIR/config.json}" "\${TC_CALENDAR_KEY_FILE:=$CONFDIR/machine.key}"
: "\${TC_CALENDAR__NATS__USER:=licensing}" "\${TC_CALENDAR__NATS__PASSWORDFILE:=$CONFDIR/nats/licensing.password}"
export TC_CALENDAR_CONFIG TC_CALENDAR_KEY_FILE TC_CALENDAR__NATS__USER TC_CALENDAR__NATS__PASSWORDFILE
exec "$PREFIX/bin/$command" "\$@"
EOF
    chmod 0755 "$BIN_DIR/$command"
  done
}

install_configuration() {
  getent group nats >/dev/null || die "the NATS server's user is missing: apt-get install nats-server first"
  getent passwd "$SERVICE_USER" >/dev/null ||
    useradd --system --user-group --home-dir /nonexistent --no-create-home --shell /usr/sbin/nologin "$SERVICE_USER"
  # the services read config.json (group); the NATS server may pass through to its files in nats/
  install -d -m 0751 -o root -g "$SERVICE_USER" "$CONFDIR"
  install -d -m 0750 -o root -g nats "$CONFDIR/nats"
  umask 077
  if [ ! -s "$CONFDIR/machine.key" ]; then  # the key secrets in config.json are encrypted with (tc_ format)
    TC_CALENDAR_KEY_FILE="$CONFDIR/machine.key" "$PREFIX/bin/python" -c 'from tccal import secrets; secrets.load_key()'
  fi
  chown root:root "$CONFDIR/machine.key"
  chmod 0600 "$CONFDIR/machine.key"
  : > "$CONFDIR/nats/passwords.env.new"
  for identity in $IDENTITIES; do
    file="$CONFDIR/nats/$identity.password"
    [ -s "$file" ] || random_password > "$file"
    variable=$(printf 'TCCAL_NATS_%s_PASSWORD' "$(printf '%s' "$identity" | tr 'a-z-' 'A-Z_')")
    printf '%s=%s\n' "$variable" "$(cat "$file")" >> "$CONFDIR/nats/passwords.env.new"
  done
  mv "$CONFDIR/nats/passwords.env.new" "$CONFDIR/nats/passwords.env"
  "$PREFIX/bin/tc-calendar" nats-auth > "$CONFDIR/nats/authorization.conf"
  rendered=$(mktemp -d)
  render "$rendered"
  install -m 0640 -o root -g nats "$rendered/nats/nats.conf" "$CONFDIR/nats/nats.conf"
  chgrp nats "$CONFDIR/nats/authorization.conf"
  chmod 0640 "$CONFDIR/nats/authorization.conf"
  umask 022
  install -d "$UNIT_DIR/$NATS_UNIT.d"
  install -m 0644 "$rendered/$NATS_UNIT.d/trueconf-calendar.conf" "$UNIT_DIR/$NATS_UNIT.d/trueconf-calendar.conf"
  for unit in "$rendered"/trueconf-calendar*.service "$rendered"/trueconf-calendar.target; do
    install -m 0644 "$unit" "$UNIT_DIR/$(basename "$unit")"
  done
  rm -rf "$rendered"
  if [ -d /run/systemd/system ]; then
    systemctl daemon-reload
  fi
}

case "${1:-}" in
  render)
    [ $# -eq 2 ] || die "usage: install.sh render DIR"
    render "$2"
    ;;
  install)
    [ "$(id -u)" -eq 0 ] || die "run it as root"
    install_packages
    install_configuration
    cat <<EOF
Installed into $PREFIX, units in $UNIT_DIR, configuration in $CONFDIR. Left to do (deploy/README.md, "systemd"):
  1. write $CONFDIR/config.json (root:$SERVICE_USER, mode 0640); encrypt its secrets with: tc-calendar --hash_pass ...
  2. tc-calendar config check
  3. systemctl restart $NATS_UNIT
  4. tc_calendar --register YOUR-KEY
  5. systemctl enable --now trueconf-calendar.service
  6. only with Exchange Online (calendarProviders entries of "type": "graph"):
     systemctl enable --now trueconf-calendar-graph-ingest.service
EOF
    ;;
  *)
    die "usage: install.sh install | install.sh render DIR"
    ;;
esac
