#!/usr/bin/env bash
# The main job, end to end against the bundled simulator:
#   start `rhvfs sim serve --sample`, mount it, back up a running 3-disk VM
#   with tar, verify every image against the simulator, restore the set into
#   restore/<name>/ (when the restore feature is present), unmount, stop.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh

WORK=${RHVFS_DEMO_DIR:-$(mktemp -d /tmp/rhvfs-demo.XXXXXX)}
STATE=$WORK/sim
MNT=$WORK/mnt
ARCHIVE=$WORK/backup.tar
mkdir -p "$STATE" "$MNT"
RHVFS=.venv/bin/rhvfs
VM=${RHVFS_DEMO_VM:-web01}

cleanup() {
  set +e
  mountpoint -q "$MNT" && $RHVFS umount "$MNT"
  [ -n "${SIM_PID:-}" ] && kill -TERM "$SIM_PID" 2>/dev/null && wait "$SIM_PID"
}
trap cleanup EXIT

echo "== starting the simulator in $STATE"
$RHVFS sim serve --state-dir "$STATE" --sample --port 0 > "$WORK/sim.out" 2> "$WORK/sim.log" &
SIM_PID=$!
for _ in $(seq 1 120); do
  grep -q "rhvfs-sim ready" "$WORK/sim.out" 2>/dev/null && break
  kill -0 "$SIM_PID" 2>/dev/null || { cat "$WORK/sim.log" >&2; exit 1; }
  sleep 0.5
done
cat "$WORK/sim.out"

echo "== mounting at $MNT"
$RHVFS mount -c sim --config-file "$STATE/ovirt-img.conf" "$MNT"
ls "$MNT" "$MNT/vms"
echo "-- $MNT/vms/$VM/@rhv:"
ls -l "$MNT/vms/$VM/@rhv"

echo "== backing up $VM with tar"
start=$(date +%s.%N)
tar -C "$MNT/vms/$VM" -cSf "$ARCHIVE" @rhv
end=$(date +%s.%N)
echo "archive: $(du -h --apparent-size "$ARCHIVE" | cut -f1) apparent, $(du -h "$ARCHIVE" | cut -f1) on disk, $(echo "$end - $start" | bc) s"

echo "== verifying the images against the simulator's volumes"
mkdir -p "$WORK/extract"
tar -C "$WORK/extract" -xSf "$ARCHIVE"
.venv/bin/python -m rhvfs.sim.verify --state-dir "$STATE" --set "$WORK/extract/@rhv"

{
  echo "== restoring the set as ${VM}-restored"
  mkdir "$MNT/restore/${VM}-restored"
  tar -C "$MNT/restore/${VM}-restored" --strip-components=1 -b 2048 -xSf "$ARCHIVE"
  for _ in $(seq 1 120); do
    phase=$(.venv/bin/python -c 'import json,sys; print(json.load(open(sys.argv[1]))["phase"])' "$MNT/restore/${VM}-restored/.status")
    [ "$phase" = done ] || [ "$phase" = failed ] && break
    sleep 1
  done
  .venv/bin/python -c 'import json,sys; s=json.load(open(sys.argv[1])); print("restore:", s["phase"], "vm_id:", s.get("vm_id"), "error:", s.get("error"))' "$MNT/restore/${VM}-restored/.status"
  [ "$phase" = done ]
  echo "== verifying the restored VM's disks against the backup"
  for img in "$WORK"/extract/@rhv/*.raw; do
    alias=$(basename "$img" .raw); alias=${alias%--*}
    want=$(sha256sum < "$img" | cut -d' ' -f1)
    got=$(sha256sum < "$MNT/vms/${VM}-restored/disks/$alias.raw" | cut -d' ' -f1)
    if [ "$want" = "$got" ]; then echo "ok       $alias"; else echo "MISMATCH $alias: $got != $want"; exit 1; fi
  done
}

echo "== unmounting (sessions clean up their snapshots and transfers)"
$RHVFS umount "$MNT"
echo "demo finished: $WORK holds the archive and the simulator's state ($(du -sh "$WORK" | cut -f1)); remove it when done"
