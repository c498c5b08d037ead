#!/bin/sh
# Build the project's image from this checkout with podman, on the locally made Debian base
# (make-base.sh, made once). One build at a time per machine: a second caller waits for the first
# (flock), then finds its layers cached. CI starts this in the background before the test suite, so
# that the image's cold build (~6 min, mostly downloads) overlaps the fast tests.
#
#   sudo infra/podman/build-image.sh [TAG]        # default localhost/cdc:test
#
# Exit status: 0 built; 3 not enough free disk for a cold build (the message says how much);
# anything else: the failing step's output on stderr.
set -eu
tag=${1:-localhost/cdc:test}
base=${CDC_BASE_IMAGE:-localhost/cdc-base:bookworm}
need_gb=${CDC_BUILD_DISK_GB:-32}  # the 7 GB dependency layer exists three times while podman commits it
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
export CONTAINERS_CONF="$here/containers.conf"
exec 9>"${CDC_IMAGE_LOCK:-/tmp/cdc-image-build.lock}"
flock -w "${CDC_IMAGE_LOCK_WAIT_S:-2400}" 9 || { echo "build-image: another build held the lock for too long" >&2; exit 1; }
if ! podman --runtime runc image exists "$tag"; then
  store=/var/lib/containers
  [ -d "$store" ] || store=/
  free_gb=$(df -P -BG "$store" | awk 'NR == 2 { sub("G", "", $4); print $4 }')
  if [ "$free_gb" -lt "$need_gb" ]; then
    echo "build-image: a cold build needs ~$need_gb GB of free disk, $free_gb GB free" >&2
    exit 3
  fi
fi
podman --runtime runc image exists "$base" || "$here/make-base.sh" "$base" >/dev/null
log=$(mktemp /tmp/cdc-image-build.XXXXXX)
if ! podman --runtime runc build --network host --format docker --build-arg "PYTHON_IMAGE=$base" \
    --build-arg "BASE_IMAGE=$base" -t "$tag" "$repo" >"$log" 2>&1; then
  tail -n 40 "$log" >&2
  rm -f "$log"
  exit 1
fi
rm -f "$log"
echo "$tag"
