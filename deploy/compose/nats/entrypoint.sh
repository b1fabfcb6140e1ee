#!/bin/sh
# nats-server of docker-compose.yml with one user per connector service (docs/architecture.md §4.6).
# At the first start it makes a random password per identity in the nats-auth volume ($NATS_AUTH_DIR), each
# readable only by the services' uid 10001 in its own directory (a service mounts only its own: volume subpath),
# and writes nats.conf from nats.conf.template with them; later starts keep them. Runs in nats:2.10-alpine (busybox).
set -eu
auth_dir=${NATS_AUTH_DIR:-/nats-auth}
template=${NATS_CONF_TEMPLATE:-/etc/nats/nats.conf.template}
identities="ews-ingest sync-engine tcs-gateway licensing graph-ingest admin"
umask 077
config=$(cat "$template")
for who in $identities; do
  mkdir -p "$auth_dir/$who"
  if [ ! -s "$auth_dir/$who/password" ]; then
    head -c 48 /dev/urandom | base64 | tr -d '/+=\n' | cut -c1-32 > "$auth_dir/$who/password.new"
    mv "$auth_dir/$who/password.new" "$auth_dir/$who/password"
  fi
  password=$(cat "$auth_dir/$who/password")
  config=$(printf '%s\n' "$config" | sed "s|@PASSWORD:$who@|$password|")
  chmod 0500 "$auth_dir/$who"
  chmod 0400 "$auth_dir/$who/password"
  chown -R "${NATS_AUTH_UID:-10001}:${NATS_AUTH_UID:-10001}" "$auth_dir/$who"
done
printf '%s\n' "$config" > "$auth_dir/nats.conf"
if grep -q 'password: "@PASSWORD:' "$auth_dir/nats.conf"; then
  echo "entrypoint: an identity of nats.conf.template has no password here" >&2
  exit 1
fi
exec "${NATS_SERVER:-nats-server}" -c "$auth_dir/nats.conf" "$@"
