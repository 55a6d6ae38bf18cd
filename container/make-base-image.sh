#!/usr/bin/env bash
# Makes a local stand-in for the Dockerfile's base image, python:3.11-slim.
#
# Why: no image registry is reachable from these machines, so FROM cannot pull
# the real image. Debian bookworm's own Python is 3.11, so a minimal bookworm
# root file system with python3 is close to the official slim image. Differences
# that matter, and what is done about them:
#   - the official image has python and pip in /usr/local/bin; bookworm's pip
#     refuses to install into the system Python (PEP 668). A venv created AT
#     /usr/local puts a working python/pip exactly where the slim image has them.
#   - pip inside a build must trust this machine's TLS interception, so the
#     host's CA bundle is copied in and named by PIP_CERT.
# It is imported under the fully qualified name Docker gives `python:3.11-slim`
# (docker.io/library/python:3.11-slim), so `podman build` finds it locally and
# never tries to pull. Cached: nothing is done when the image already exists.
#
# Usage: container/make-base-image.sh   (as root; needs debootstrap and podman)
set -euo pipefail

IMAGE=${BASE_IMAGE:-docker.io/library/python:3.11-slim}
SUITE=bookworm
HOST_CA=/etc/ssl/certs/ca-certificates.crt
IMAGE_CA=/etc/ssl/certs/host-ca-bundle.crt

if podman image exists "$IMAGE"; then
    echo "base image $IMAGE exists (cached)"
    exit 0
fi

# The Debian mirror this machine's apt uses for $SUITE (deb822 .sources files
# or one-line sources.list), falling back to the public one.
apt_mirror() {
    local uri
    uri=$(awk -v suite="$SUITE" '
        BEGIN { RS = "" }
        { uris = ""; suites = ""
          n = split($0, lines, "\n")
          for (i = 1; i <= n; i++) {
              if (lines[i] ~ /^URIs:/)   { uris = lines[i]; sub(/^URIs:[ \t]*/, "", uris) }
              if (lines[i] ~ /^Suites:/) { suites = " " lines[i] " " }
          }
          if (uris != "" && suites ~ (" " suite " ")) { split(uris, u, /[ \t]+/); print u[1]; exit }
        }' /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
    if [ -z "$uri" ]; then
        uri=$(awk -v suite="$SUITE" '$1 == "deb" { sub(/\[[^]]*\]/, "")
                  if ($3 == suite) { print $2; exit } }' \
              /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null || true)
    fi
    echo "${uri:-http://deb.debian.org/debian}"
}

mirror=$(apt_mirror)
root=$(mktemp -d /var/tmp/c10k-base.XXXXXX)
trap 'rm -rf "$root"' EXIT

echo "making $IMAGE from $SUITE ($mirror) in $root"
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
    "$SUITE" "$root" "$mirror"
chroot "$root" python3 -m venv /usr/local
cp "$HOST_CA" "$root$IMAGE_CA"
# What the image does not need at run time: downloaded packages and apt lists.
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*

tar -C "$root" -c . | podman import \
    --change "ENV PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin" \
    --change "ENV LANG=C.UTF-8" \
    --change "ENV PIP_CERT=$IMAGE_CA" \
    --change 'CMD ["python3"]' \
    --message "stand-in for python:3.11-slim: debootstrap $SUITE + venv at /usr/local" \
    - "$IMAGE"
echo "made $IMAGE"
