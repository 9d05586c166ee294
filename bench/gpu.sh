#!/usr/bin/env bash
# GPU throughput check on a machine that already has a CUDA torch (no network, no Ray needed):
# run bench/throughput.py from this source checkout (PYTHONPATH, no install) with an existing
# interpreter: the whole job on 60,000 frames of 640x360 (1 face), then synthetic 640x360 (1
# face) and 1280x720 (2 faces) videos in both landmark modes, with the per-step split of the
# face stage, and write the table under $OUT.
# Budget: under 8 minutes in all (VAERR_GPU_BUDGET_S, default 450).
#
#   OUT=/tmp/gpu-bench VAERR_PYTHON=python3 bench/gpu.sh [--cpu] [--quick] [bench.throughput args]
#
#   --cpu    no GPU: run the same script on the CPU (a smoke test of the whole path)
#   --quick  short settings (2 s videos, 1 copy, no naive rows): 2 minutes on 2 CPU cores
#            without Ray, 7.5 with its rows
#
# Environment:
#   OUT            output folder (default bench/out): throughput.md (the tables), gpu.log
#   VAERR_PYTHON   the interpreter to use, with torch (CUDA build) installed (default python3);
#                  Python >= 3.11 (3.12 with torch 2.11 is what the H100 machine had)
#   VAERR_WHEELS   a folder of wheels for what that interpreter lacks, installed without
#                  dependencies into VAERR_DEPS (never into the interpreter itself): av,
#                  face-alignment, pydantic, pydantic-core, annotated-types, typing-inspection
#                  (under 60 MB; prepare on a networked machine for the target's Python:
#                  pip download -d wheels --no-deps --python-version 3.12 --only-binary=:all:
#                  --platform manylinux_2_28_x86_64 av==18.1.0 face-alignment==1.5.0 pydantic \
#                  pydantic-core annotated-types typing-inspection)
#   VAERR_DEPS     where those wheels go (default ~/.cache/vaerr/gpu-deps), put on PYTHONPATH
#   VAERR_ASSETS   the shared assets folder (default ../shared/assets): RetinaFace weights and
#                  the mean face; the weights cache (VAERR_CACHE) is seeded from it
#   VAERR_GPU_BUDGET_S  total budget in seconds (default 450)
#
# Ray is not needed: without it the table has local-runner rows only and says so.
set -euo pipefail

START=$(date +%s)
BUDGET=${VAERR_GPU_BUDGET_S:-450}
cd "$(dirname "$0")/.."
REPO=$PWD
OUT=${OUT:-bench/out}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
ASSETS=${VAERR_ASSETS:-../shared/assets}
WHEELS=${VAERR_WHEELS:-wheels}
DEPS=${VAERR_DEPS:-$HOME/.cache/vaerr/gpu-deps}
PY=${VAERR_PYTHON:-python3}
DEVICE=cuda
QUICK=0
ARGS=()
for arg in "$@"; do
  case "$arg" in
    --cpu) DEVICE=cpu ;;
    --quick) QUICK=1 ;;
    *) ARGS+=("$arg") ;;
  esac
done
exec > >(tee "$OUT/gpu.log") 2>&1

die() {
  echo "bench/gpu.sh: $*" >&2
  exit 2
}
elapsed() { echo $(($(date +%s) - START)); }

# 1. A GPU, before anything slow.
if [ "$DEVICE" = cuda ]; then
  command -v nvidia-smi >/dev/null 2>&1 ||
    die "no GPU: nvidia-smi not found (no NVIDIA driver here; --cpu runs on the CPU)"
  if ! GPUS=$(timeout 30 nvidia-smi --query-gpu=name,memory.total,driver_version \
    --format=csv,noheader 2>&1) || [ -z "$GPUS" ] || grep -qiE "no devices|failed|error" <<<"$GPUS"; then
    die "no GPU visible: nvidia-smi says: ${GPUS:-nothing}"
  fi
  echo "GPU: $GPUS"
fi

# 2. Assets; seed the weights cache from them (nothing is downloaded).
for f in detectors/retinaface_mobilenet0.25_Final.pth landmarks/20words_mean_face.npy; do
  [ -f "$ASSETS/$f" ] || die "asset $ASSETS/$f not found (set VAERR_ASSETS to shared/assets)"
done
VAERR_ASSETS=$(cd "$ASSETS" && pwd)
export VAERR_ASSETS
export VAERR_CACHE=${VAERR_CACHE:-$HOME/.cache/vaerr}
mkdir -p "$VAERR_CACHE"
cp -n "$VAERR_ASSETS/detectors/retinaface_mobilenet0.25_Final.pth" \
  "$VAERR_CACHE/retinaface_mobilenet0.25.pth" 2>/dev/null || true
cp -n "$VAERR_ASSETS/landmarks/20words_mean_face.npy" "$VAERR_CACHE/" 2>/dev/null || true

# 3. The interpreter: torch from it, the rest from the wheel folder where missing.
command -v "$PY" >/dev/null 2>&1 || die "interpreter '$PY' not found (set VAERR_PYTHON)"
"$PY" -c 'import sys; assert sys.version_info >= (3, 11)' 2>/dev/null ||
  die "$PY is older than Python 3.11"
"$PY" -c 'import torch, torchvision' 2>/dev/null ||
  die "$PY has no torch/torchvision (this script uses the machine's own CUDA torch)"
export PYTHONPATH="$REPO:$DEPS${PYTHONPATH:+:$PYTHONPATH}"
missing() {
  "$PY" - <<'EOF'
import importlib
wheel = {"av": "av", "face_alignment": "face-alignment", "pydantic": "pydantic",
         "pydantic_core": "pydantic-core", "annotated_types": "annotated-types",
         "typing_inspection": "typing-inspection"}
for mod, dist in wheel.items():
    try:
        importlib.import_module(mod)
    except ImportError:
        print(dist)
EOF
}
NEED=$(missing | tr '\n' ' ')
if [ -n "${NEED// /}" ]; then
  [ -d "$WHEELS" ] || die "missing $NEED and no wheel folder '$WHEELS' (set VAERR_WHEELS)"
  echo "installing $NEED from $WHEELS into $DEPS (no dependencies, offline) ..."
  mkdir -p "$DEPS"
  # shellcheck disable=SC2086
  timeout 120 "$PY" -m pip install -q --no-index --no-deps --find-links "$WHEELS" \
    --target "$DEPS" --upgrade $NEED || die "installing $NEED from $WHEELS failed"
  NEED=$(missing | tr '\n' ' ')
  [ -z "${NEED// /}" ] || die "still missing after the install: $NEED"
fi
"$PY" - <<EOF || die "the pipeline does not import with $PY (a module above is missing)"
import sys
import torch
import pipeline.faces.extract, pipeline.runner  # noqa: F401
ok = torch.cuda.is_available()
print(f"python {sys.version.split()[0]}, torch {torch.__version__} (CUDA {torch.version.cuda}),",
      torch.cuda.get_device_name(0) if ok else "no CUDA device")
if "$DEVICE" == "cuda" and not ok:
    sys.exit("torch.cuda.is_available() is False")
EOF
"$PY" -c 'import ray' 2>/dev/null && STAGES=decode,face,split,local,ray,naive ||
  { echo "Ray is not installed: local runner rows only"; STAGES=decode,face,split,local,naive; }

# 4. The benchmark. GPU: first the whole job the targets name (360p-job: 60,000 frames, 4
#    distinct 40 s videos listed 15 times, retina5, local runner; start-up and steady frames/s
#    from its run.json), then 4 distinct 12 s videos per size, each listed 4 times (about 190 s
#    of video per size), the naive baseline on the first 1 s of each; CPU --quick: tiny.
if [ "$QUICK" = 1 ]; then
  SIZE=(--videos 1 --copies 1 --seconds 2 --fan-seconds 1 --job-frames 100 --job-seconds 2)
  STAGES=${STAGES%,naive}
else
  SIZE=(--videos 4 --copies 4 --seconds 12 --naive-seconds 1 --fan-seconds 12
    --job-frames 60000 --job-seconds 40)
fi
LEFT=$((BUDGET - $(elapsed) - 15))
[ "$LEFT" -gt 60 ] || die "only $LEFT s left of the $BUDGET s budget"
echo "running bench.throughput on $DEVICE (budget ${LEFT} s) ..."
set +e
timeout $((LEFT + 20)) "$PY" -m bench.throughput --device "$DEVICE" --inputs 360p-job,360p,720p \
  --modes retina5,fan68 --stages "$STAGES" --knobs "" --long "" --repeat 1 \
  --budget-s "$LEFT" --workdir "$OUT/work" --no-append "${SIZE[@]}" "${ARGS[@]}" \
  >"$OUT/throughput.md"
rc=$?
set -e
cat "$OUT/throughput.md"
rm -rf "$OUT/work/videos"
echo "bench/gpu.sh: done in $(elapsed) s (exit $rc); table in $OUT/throughput.md"
exit $rc
