#!/usr/bin/env bash
# Builds the Debian package from a built binary, with dpkg-deb (no cargo-deb
# needed): /usr/bin/shardgate, /etc/shardgate/shardgate.yaml (a conffile), the
# systemd unit, a `shardgate` system user (postinst), docs.
#   packaging/build-deb.sh [BINARY]     (default target/release/shardgate, built if missing)
# Prints the .deb's path.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-target/release/shardgate}
if [ ! -x "$bin" ]; then
  cargo build --release --locked >&2
fi
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
arch=$(dpkg --print-architecture)
root=target/debian/root
rm -rf "$root"
install -D -m 0755 "$bin" "$root/usr/bin/shardgate"
strip --strip-debug "$root/usr/bin/shardgate" 2>/dev/null || true
install -D -m 0644 packaging/deb/shardgate.yaml "$root/etc/shardgate/shardgate.yaml"
install -D -m 0644 packaging/deb/shardgate.service "$root/lib/systemd/system/shardgate.service"
install -D -m 0644 README.md "$root/usr/share/doc/shardgate/README.md"
install -D -m 0644 contrib/grafana/shardgate.json "$root/usr/share/doc/shardgate/grafana/shardgate.json"
install -d "$root/DEBIAN"
for f in postinst prerm postrm; do install -m 0755 "packaging/deb/$f" "$root/DEBIAN/$f"; done
echo /etc/shardgate/shardgate.yaml > "$root/DEBIAN/conffiles"
size=$(du -sk "$root" | cut -f1)
cat > "$root/DEBIAN/control" <<CONTROL
Package: shardgate
Version: $version
Architecture: $arch
Maintainer: shardgate developers <shardgate@localhost>
Installed-Size: $size
Depends: libc6, adduser
Section: net
Priority: optional
Description: self-hosted, thread-per-core API gateway with Amazon API Gateway semantics
 HTTP, REST and WebSocket APIs with stages, API keys and usage plans,
 throttling, response caching, authorizers, request validation, metrics,
 access logs and a web console, in one binary.
CONTROL
out="target/debian/shardgate_${version}_${arch}.deb"
dpkg-deb --root-owner-group --build "$root" "$out" >&2
echo "$out"
