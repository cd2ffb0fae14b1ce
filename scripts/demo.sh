#!/usr/bin/env bash
# One command: set up, then run the main job on the embedded default (local-folder
# stores, no cloud account): the daemon protects sample health records dropped into
# its inbox; then every file is restored and compared bit for bit.
set -euo pipefail
cd "$(dirname "$0")/.."
DISPERSIOND_EXTRAS=${DISPERSIOND_EXTRAS:-dicom} SKIP_NPM=1 bash scripts/setup.sh
DSP=".venv/bin/dispersiond"
DEMO=${DEMO_DIR:-.demo}
rm -rf "$DEMO"
"$DSP" init "$DEMO"
CFG="$DEMO/dispersiond.yaml"

# Sample records: synthetic FHIR, HL7 v2 and CSV shipped with dispersiond, plus the
# real CT slice that pydicom ships, if pydicom is installed.
mkdir -p "$DEMO/originals"
cp dispersiond/samples/*.json dispersiond/samples/*.hl7 dispersiond/samples/*.csv "$DEMO/originals/"
.venv/bin/python - "$DEMO/originals" <<'PY' || true
import shutil, sys
from pathlib import Path
import pydicom.data
src = Path(pydicom.data.__file__).parent / "test_files" / "CT_small.dcm"
shutil.copy(src, Path(sys.argv[1]) / "CT_small.dcm")
PY
count=$(ls "$DEMO/originals" | wc -l)

echo "== starting the daemon (Ctrl-C stops it); dropping $count records into $DEMO/inbox"
"$DSP" -c "$CFG" run &
pid=$!
trap 'kill $pid 2>/dev/null || true' EXIT
for f in "$DEMO"/originals/*; do cp "$f" "$DEMO/inbox/.$(basename "$f").part"; mv "$DEMO/inbox/.$(basename "$f").part" "$DEMO/inbox/$(basename "$f")"; done

for _ in $(seq 1 120); do
  done_count=$("$DSP" -c "$CFG" ls --json | .venv/bin/python -c 'import json,sys; print(sum(r["state"]=="done" for r in json.load(sys.stdin)))')
  [ "$done_count" -ge "$count" ] && break
  sleep 1
done
kill -TERM $pid; wait $pid || true; trap - EXIT
[ "$done_count" -ge "$count" ] || { echo "demo: only $done_count of $count files were protected"; exit 1; }

echo; echo "== protected files"
"$DSP" -c "$CFG" ls
echo; echo "== what the untrusted 'clouds' hold: random names, ciphertext only"
find "$DEMO/stores/cloud-a" -type f | head -n 3
echo; echo "== restore every file and compare with the original"
mkdir -p "$DEMO/restored"
for f in "$DEMO"/originals/*; do
  name=$(basename "$f")
  "$DSP" -c "$CFG" restore "$name" --to "$DEMO/restored/$name"
  cmp "$f" "$DEMO/restored/$name"
done
"$DSP" -c "$CFG" verify --deep
echo; echo "demo: all $count records protected, dispersed 2-of-3, restored bit-exact (see $DEMO/)"
