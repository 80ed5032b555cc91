#!/usr/bin/env bash
# Installs what rhvfs needs on a Debian 12 machine (as root) and creates .venv
# with the project, its test tools and the simulator (the test and sim extras).
# Safe to run again: it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
  python3 python3-venv python3-dev gcc pkg-config
  fuse3 libfuse3-dev            # pyfuse3 builds against libfuse3
  libxml2-dev libcurl4-openssl-dev libssl-dev   # ovirt-engine-sdk-python (libxml2, pycurl)
  qemu-utils                    # qemu-img, qemu-nbd, qemu-io: the simulator's storage
  fdisk e2fsprogs               # sfdisk + mke2fs -d: deterministic guest disks
  tar rsync restic borgbackup   # the backup tools the tests drive
  procps psmisc
  systemd libseccomp2           # systemd-analyze (unit checks), seccomp for the unit sandbox test
)
if [ "${RHVFS_GUESTFS:-0}" = 1 ]; then
  APT_PACKAGES+=(libguestfs-tools linux-image-amd64)
fi
# Bacula community for the Bacula tests: tests/support/bacula.py runs private
# daemons as plain processes with their own sqlite3 catalog (from the schema
# under /usr/share/dbconfig-common), so the packaged services stay stopped.
if [ "${RHVFS_BACULA:-0}" = 1 ]; then
  APT_PACKAGES+=(bacula-director bacula-director-sqlite3 bacula-sd bacula-fd bacula-console sqlite3)
fi

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "setup: need root to install: ${missing[*]}" >&2
    exit 1
  fi
  echo "setup: installing ${missing[*]}"
  # No catalog from dbconfig-common: the tests create their own.
  if command -v debconf-set-selections >/dev/null; then
    printf '%s\n' \
      'bacula-director-sqlite3 bacula-director-sqlite3/dbconfig-install boolean false' \
      'bacula-director-sqlite3 bacula-director-sqlite3/dbconfig-upgrade boolean false' \
      | debconf-set-selections
  fi
  # Installed packages must not start their services (bacula-dir, -sd, -fd):
  # deny them while installing, unless the machine already has a policy.
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  if [ -d /run/systemd/system ] && [[ " ${missing[*]} " == *" bacula-"* ]]; then
    systemctl disable --now bacula-director bacula-sd bacula-fd >/dev/null 2>&1 || true
  fi
fi
# FUSE needs the device; in containers it may exist without the module loaded.
[ -e /dev/fuse ] || modprobe fuse 2>/dev/null || true

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip >/dev/null 2>&1 || true
if ! .venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test,sim]' > .venv/pip.log 2>&1; then
  grep -v '^WARNING: Location' .venv/pip.log >&2
  echo "setup: pip install failed" >&2
  exit 1
fi
.venv/bin/python -c 'import pyfuse3, trio, httpx, ovirtsdk4, ovirt_imageio, cryptography, rhvfs' \
  && [ -x .venv/bin/pytest ] && [ -x .venv/bin/rhvfs ] \
  || { echo "setup: the venv is incomplete" >&2; exit 1; }
echo "setup: ready ($(.venv/bin/python --version))"
