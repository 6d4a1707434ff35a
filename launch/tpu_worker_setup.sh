#!/usr/bin/env bash
# Runs on every TPU worker (launch/tpu_vm.sh ships this checkout to ~/medclm and calls it there): a Python >= 3.11
# virtual environment in ~/medclm/.venv with jax[tpu] and this project, and each bucket named in the arguments
# mounted with Cloud Storage FUSE at /gcs/BUCKET (the trainer reads and writes POSIX paths).
#
#   bash ~/medclm/launch/tpu_worker_setup.sh [BUCKET ...]
#
# The TPU images (Ubuntu 22.04) ship Python 3.10: python3.11 comes from Ubuntu's own packages. Idempotent: a
# second run reuses the environment and skips mounted buckets.
set -euo pipefail

repo=$HOME/medclm
apt_install() {
  sudo apt-get update -qq
  sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@"
}

# ------------------------------------------------------------------------------------------ Python >= 3.11
python=""
for candidate in python3.13 python3.12 python3.11 python3; do
  if command -v "$candidate" >/dev/null && "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    python=$candidate
    break
  fi
done
if [[ -z $python ]]; then
  apt_install python3.11 python3.11-venv
  python=python3.11
fi
if [[ ! -x $repo/.venv/bin/python ]]; then
  "$python" -m venv "$repo/.venv" 2>/dev/null || { apt_install "$python-venv" && "$python" -m venv "$repo/.venv"; }
fi
"$repo/.venv/bin/pip" install -q -U pip
"$repo/.venv/bin/pip" install -q "jax[tpu]" -e "$repo"

# ------------------------------------------------------------------------------------------ buckets
(($#)) || exit 0
if ! command -v gcsfuse >/dev/null; then
  # Google's apt repository for gcsfuse, as its installation guide describes.
  keyring=/usr/share/keyrings/cloud.google.asc
  curl -fsSL https://packages.cloud.google.com/apt/doc/apt-key.gpg | sudo tee "$keyring" >/dev/null
  echo "deb [signed-by=$keyring] https://packages.cloud.google.com/apt gcsfuse-$(lsb_release -c -s) main" \
    | sudo tee /etc/apt/sources.list.d/gcsfuse.list >/dev/null
  apt_install gcsfuse
fi
for bucket in "$@"; do
  mount_point=/gcs/$bucket
  mountpoint -q "$mount_point" && continue
  sudo mkdir -p "$mount_point"
  sudo chown "$(id -u):$(id -g)" "$mount_point"
  # --implicit-dirs: folders made by other tools show up; --rename-dir-limit: Orbax finalizes a checkpoint by
  # renaming its temporary folder, which gcsfuse refuses by default on a flat bucket.
  gcsfuse --implicit-dirs --rename-dir-limit=200000 "$bucket" "$mount_point"
done
