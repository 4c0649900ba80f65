#!/usr/bin/env bash
# Usage: hack/debian-packages.sh WHAT CHECK:PACKAGE...
# Installs with apt-get the Debian packages whose CHECK is missing (a command on PATH, or a
# path when CHECK starts with /), once, and says so; WHAT names who needs them. The
# project's scripts call it, so that `make test` and `make run` need nothing installed by
# hand on a Debian machine.
set -euo pipefail

[ $# -ge 2 ] || { echo "usage: hack/debian-packages.sh WHAT CHECK:PACKAGE..." >&2; exit 2; }
what=$1
shift
missing=()
for p in "$@"; do
  check=${p%%:*}
  if [[ $check == /* ]]; then [ -e "$check" ] && continue; else command -v "$check" >/dev/null && continue; fi
  missing+=("${p#*:}")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if ! command -v apt-get >/dev/null || [ "$(id -u)" != 0 ]; then
  echo "[packages] $what needs: ${missing[*]} (Debian package names); install them, then run again" >&2
  exit 1
fi
echo "[packages] installing for $what from Debian: ${missing[*]} (apt-get, once)" >&2
log=$(mktemp)
trap 'rm -f "$log"' EXIT
apt-get update -qq >"$log" 2>&1 || true
if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >>"$log" 2>&1; then
  tail -n 20 "$log" >&2
  echo "[packages] apt-get install ${missing[*]} failed (above); install them by hand, then run again" >&2
  exit 1
fi
