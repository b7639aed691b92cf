#!/usr/bin/env bash
# Install the Debian packages that tests/slurm_cluster.py (single-node SLURM
# test cluster) needs: slurmctld slurmd slurm-client munge.
#
#   bash tests/install_slurm.sh
#
# Idempotent and quiet: exits 0 at once when all are installed; otherwise runs
# `apt-get install` (and `apt-get update` only when the package lists are
# missing or the install fails with the present ones).  apt's output goes to a
# log file that is printed only on failure.  Needs root (or password-less
# sudo) and an apt mirror.  The packages' init scripts cannot start anything
# without systemd (harmless); the harness starts its own daemons.
set -euo pipefail

PKGS=(slurmctld slurmd slurm-client munge)

missing=()
for p in "${PKGS[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$p")
    fi
done
[ "${#missing[@]}" -eq 0 ] && exit 0

if ! command -v apt-get >/dev/null 2>&1; then
    echo "install_slurm.sh: apt-get not found; cannot install: ${missing[*]}" >&2
    exit 1
fi
SUDO=()
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        SUDO=(sudo -n)
    else
        echo "install_slurm.sh: not root and no password-less sudo; cannot install: ${missing[*]}" >&2
        exit 1
    fi
fi

log=$(mktemp /tmp/install_slurm.XXXXXX.log)
trap 'rm -f "$log"' EXIT
export DEBIAN_FRONTEND=noninteractive
apt_update() { timeout 300 "${SUDO[@]}" apt-get -q update >>"$log" 2>&1; }
apt_install() {
    timeout 600 "${SUDO[@]}" apt-get -q -y --no-install-recommends \
        -o Dpkg::Use-Pty=0 -o Dpkg::Options::=--force-confold \
        install "${missing[@]}" >>"$log" 2>&1
}

if ! compgen -G "/var/lib/apt/lists/*_Packages" >/dev/null; then
    apt_update || true
fi
if ! apt_install; then
    apt_update && apt_install || {
        echo "install_slurm.sh: installing ${missing[*]} failed:" >&2
        tail -n 40 "$log" >&2
        exit 1
    }
fi

for b in slurmctld slurmd slurmstepd sinfo sbatch srun munged mungekey; do
    if ! command -v "$b" >/dev/null 2>&1 && [ ! -x "/usr/sbin/$b" ]; then
        echo "install_slurm.sh: $b still missing after installing ${missing[*]}" >&2
        exit 1
    fi
done
exit 0
