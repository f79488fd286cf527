#!/usr/bin/env bash
# Builds the Debian package, installs it with dpkg -i, runs the unit's
# ExecStartPre and ExecStart lines as the unit's user (no systemd needed), checks
# that the installed gateway answers and the console is served, then purges it.
#   packaging/test-deb.sh [BINARY]      (.ci/run passes target/debug/shardgate)
# Needs root (dpkg -i); bounded in time; leaves nothing installed.
set -euo pipefail
cd "$(dirname "$0")/.."
. load-tests/lib.sh
deb=$(packaging/build-deb.sh "${1:-}")
echo "built $deb"
contents=$(dpkg-deb --contents "$deb")
for want in ./usr/bin/shardgate ./etc/shardgate/shardgate.yaml ./lib/systemd/system/shardgate.service; do
  grep -q " $want\$" <<<"$contents" || { echo "FAIL: $want not in the package"; exit 1; }
done
[ "$(id -u)" = 0 ] || { echo "not root: the package was built and listed, not installed"; exit 0; }
ports_free '8080|9901'
pid=
cleanup() {
  [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
  dpkg --purge shardgate >/dev/null 2>&1 || true
}
trap cleanup EXIT
dpkg -i "$deb"
getent passwd shardgate >/dev/null || { echo "FAIL: no shardgate user"; exit 1; }
[ "$(stat -c %U /var/lib/shardgate)" = shardgate ] || { echo "FAIL: /var/lib/shardgate not the user's"; exit 1; }
unit=/lib/systemd/system/shardgate.service
user=$(sed -n 's/^User=//p' "$unit")
workdir=$(sed -n 's/^WorkingDirectory=//p' "$unit")
pre=$(sed -n 's/^ExecStartPre=//p' "$unit")
start=$(sed -n 's/^ExecStart=//p' "$unit")
/usr/bin/shardgate --version
# As systemd would: the unit's user, directory and environment.
(cd "$workdir" && timeout 20 runuser -u "$user" -- env SHARDGATE_LOG=info $pre)
(cd "$workdir" && exec timeout 60 runuser -u "$user" -- env SHARDGATE_LOG=info $start) &
pid=$!
ok=
for _ in $(seq 1 100); do
  if body=$(curl -sf --max-time 2 http://127.0.0.1:8080/prod/hello); then ok=1; break; fi
  sleep 0.1
done
[ -n "$ok" ] || { echo "FAIL: the installed gateway did not answer"; exit 1; }
grep -q "hello from shardgate" <<<"$body" || { echo "FAIL: unexpected body: $body"; exit 1; }
curl -sf --max-time 2 http://127.0.0.1:9901/readyz >/dev/null || { echo "FAIL: /readyz"; exit 1; }
curl -sf --max-time 2 http://127.0.0.1:9901/console | grep -q "shardgate console" \
  || { echo "FAIL: /console"; exit 1; }
[ -f /var/lib/shardgate/shardgate.redb ] || { echo "FAIL: no store in /var/lib/shardgate"; exit 1; }
kill "$pid"; wait "$pid" 2>/dev/null || true; pid=
dpkg --purge shardgate >/dev/null
if getent passwd shardgate >/dev/null || [ -e /usr/bin/shardgate ]; then
  echo "FAIL: purge left the user or the binary"; exit 1
fi
echo "deb: installed, ran as $user from the unit's ExecStart, answered, purged"
