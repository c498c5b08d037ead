#!/bin/sh
# Make the Debian base image that the project's Dockerfile builds on where no public container
# registry is reachable (only Debian's and PyPI's package mirrors): debootstrap a bookworm root file
# system with Python 3.11, add this machine's extra CA certificates (an egress proxy's; pip and apt
# inside the build verify TLS against them) and `podman import` it.
#
#   sudo infra/podman/make-base.sh [TAG]          # default localhost/cdc-base:bookworm
#   podman build --network host --format docker \
#     --build-arg PYTHON_IMAGE=localhost/cdc-base:bookworm \
#     --build-arg BASE_IMAGE=localhost/cdc-base:bookworm -t localhost/cdc:cpu .
#
# Needs root, debootstrap and podman (apt-get install podman runc debootstrap); ~1 min, ~250 MB.
set -eu
tag=${1:-localhost/cdc-base:bookworm}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
root=$(mktemp -d /var/tmp/cdc-base.XXXXXX)
trap 'rm -rf "$root"' EXIT INT TERM
debootstrap --variant=minbase --include=python3,python3-venv,python-is-python3,ca-certificates \
  bookworm "$root" "$mirror" >"$root.log" 2>&1 || { echo "make-base: debootstrap failed, see $root.log" >&2; exit 1; }
rm -f "$root.log"
for crt in /usr/local/share/ca-certificates/*.crt; do
  [ -f "$crt" ] && cp "$crt" "$root/usr/local/share/ca-certificates/"
done
chroot "$root" update-ca-certificates >/dev/null
chroot "$root" apt-get clean
rm -rf "$root"/var/lib/apt/lists/*
tar -C "$root" -c . | podman import --change 'CMD ["/bin/bash"]' - "$tag" >/dev/null 2>&1
echo "$tag"
