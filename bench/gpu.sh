#!/usr/bin/env bash
# GPU throughput check: on a fresh GPU machine with no network, install vaerr from a wheel
# folder prepared beforehand, then run bench/throughput.py on synthetic 720p videos in both
# landmark modes (retina5, fan68) and print the table. Budget: under 8 minutes in all.
#
#   bench/gpu.sh [extra bench.throughput arguments]
#
# Fails fast (exit 2, one clear line) when no GPU is visible (nvidia-smi, then
# torch.cuda.is_available()), when the wheel folder or Python 3.11 is missing, or when the
# assets (RetinaFace weights, mean face) are not found.
#
# Preparing the wheel folder (once, on a networked Linux x86_64 machine, at the repo root):
#
#   python3.11 -m pip download -d wheels -c constraints.txt -e . "setuptools>=68" wheel
#   # from another platform, add: --platform manylinux_2_28_x86_64 --python-version 3.11 \
#   #                             --only-binary=:all:
#
# then copy `wheels/` (about 4 GB: torch with its CUDA 13 libraries) next to the checkout on
# the GPU machine (or point VAERR_WHEELS at it), together with the assets folder
# (VAERR_ASSETS, default ../shared/assets). The GPU's driver must support CUDA 13
# (torch==2.14.1 from PyPI).
#
# Environment:
#   VAERR_WHEELS   wheel folder (default: wheels)
#   VAERR_PYTHON   an existing interpreter with vaerr installed: skips the install
#                  (default: $VENV/bin/python if it works, else .venv/bin/python if it
#                  sees the GPU, else a fresh $VENV from the wheels)
#   VAERR_GPU_VENV where that fresh venv goes (default ~/.cache/vaerr/venv-gpu, outside the
#                  checkout so the working tree stays clean)
#   PYTHON311      the Python 3.11 used to create .venv-gpu (default: python3.11)
#   VAERR_GPU_BUDGET_S  total budget in seconds (default 470, under 8 minutes)
#   VAERR_ASSETS   the shared assets folder (default ../shared/assets)
set -euo pipefail

START=$(date +%s)
BUDGET=${VAERR_GPU_BUDGET_S:-470}
cd "$(dirname "$0")/.."
WHEELS=${VAERR_WHEELS:-wheels}
PY311=${PYTHON311:-python3.11}
ASSETS=${VAERR_ASSETS:-../shared/assets}
VENV=${VAERR_GPU_VENV:-$HOME/.cache/vaerr/venv-gpu}

die() {
  echo "bench/gpu.sh: $*" >&2
  exit 2
}
elapsed() { echo $(($(date +%s) - START)); }

# 1. A GPU, before anything slow.
command -v nvidia-smi >/dev/null 2>&1 ||
  die "no GPU: nvidia-smi not found (no NVIDIA driver on this machine)"
if ! GPUS=$(timeout 30 nvidia-smi --query-gpu=name,memory.total,driver_version \
  --format=csv,noheader 2>&1) || [ -z "$GPUS" ] || ! grep -q . <<<"$GPUS"; then
  die "no GPU visible: nvidia-smi says: ${GPUS:-nothing}"
fi
if grep -qiE "no devices|failed|error" <<<"$GPUS"; then
  die "no GPU visible: nvidia-smi says: $GPUS"
fi
echo "GPU: $GPUS"

# 2. Assets (the face stage needs the RetinaFace weights and the mean face).
for f in detectors/retinaface_mobilenet0.25_Final.pth landmarks/20words_mean_face.npy; do
  [ -f "$ASSETS/$f" ] || die "asset $ASSETS/$f not found (set VAERR_ASSETS to shared/assets)"
done
export VAERR_ASSETS
VAERR_ASSETS=$(cd "$ASSETS" && pwd)

# 3. An interpreter with vaerr and a CUDA torch.
cuda_ok() { "$1" -c "import torch, pipeline.runner; assert torch.cuda.is_available()" \
  >/dev/null 2>&1; }
PY=${VAERR_PYTHON:-}
if [ -z "$PY" ]; then
  for cand in "$VENV/bin/python" .venv/bin/python; do
    if [ -x "$cand" ] && cuda_ok "$cand"; then
      PY=$cand
      break
    fi
  done
fi
if [ -z "$PY" ]; then
  [ -d "$WHEELS" ] && ls "$WHEELS"/torch-*.whl >/dev/null 2>&1 ||
    die "no wheel folder '$WHEELS' with a torch wheel (and no network to install from):" \
      "prepare it on a networked machine with" \
      "'python3.11 -m pip download -d wheels -c constraints.txt -e . \"setuptools>=68\" wheel'" \
      "and copy it here, or set VAERR_WHEELS (see the top of bench/gpu.sh)"
  command -v "$PY311" >/dev/null 2>&1 || die "Python 3.11 not found ($PY311); set PYTHON311"
  echo "installing from $WHEELS into $VENV (offline) ..."
  rm -rf "$VENV"
  mkdir -p "$(dirname "$VENV")"
  "$PY311" -m venv "$VENV"
  PIP=("$VENV/bin/python" -m pip install -q --no-index --find-links "$WHEELS")
  timeout 240 "${PIP[@]}" "setuptools>=68" wheel ||
    die "installing setuptools from $WHEELS failed (is it in the folder?)"
  timeout 300 "${PIP[@]}" --no-build-isolation -c constraints.txt -e . ||
    die "offline install from $WHEELS failed or took over 300 s: a wheel is missing" \
      "(re-run the pip download above) or the folder is for another platform/Python"
  PY=$VENV/bin/python
  echo "installed in $(elapsed) s"
fi
"$PY" - <<'EOF' || die "torch cannot use the GPU (see above); the driver must support CUDA 13"
import sys
import torch
if not torch.cuda.is_available():
    print(f"torch {torch.__version__} (CUDA {torch.version.cuda}): torch.cuda.is_available() "
          "is False", file=sys.stderr)
    sys.exit(1)
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, {torch.cuda.get_device_name(0)}")
EOF

# 4. The benchmark: synthetic 720p (2 faces each), both landmark modes, GPU overrides; the
#    naive baseline (one frame / one face per call) on the first 4 s of each video only.
LEFT=$((BUDGET - $(elapsed) - 15))
[ "$LEFT" -gt 90 ] || die "only $LEFT s left of the $BUDGET s budget after the install"
echo "running bench.throughput on the GPU (budget ${LEFT} s) ..."
set +e
timeout $((LEFT + 10)) "$PY" -m bench.throughput --device cuda --inputs 720p \
  --modes retina5,fan68 --videos 4 --copies 4 --seconds 12 --naive-seconds 4 \
  --long "" --budget-s "$LEFT" "$@"
rc=$?
set -e
echo "bench/gpu.sh: done in $(elapsed) s (exit $rc)"
exit $rc
