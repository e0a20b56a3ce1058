#!/usr/bin/env bash
# Installs provenance and what it needs on a fresh machine.
#   bash scripts/install.sh          # the package (runtime)
#   bash scripts/install.sh --dev    # + test tools, Chromium and poppler for the browser/PDF tests
# On a machine without an NVIDIA GPU, the CPU build of PyTorch is installed first, so that pip
# does not pull the multi-GB CUDA build; GPU machines keep whatever torch they choose.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
dev=0
[ "${1:-}" = "--dev" ] && dev=1

if [ "$dev" = 1 ] && command -v apt-get >/dev/null 2>&1; then
  SUDO=""; [ "$(id -u)" != 0 ] && SUDO="sudo"
  need=""
  command -v chromium >/dev/null 2>&1 || need="$need chromium"
  command -v pdftotext >/dev/null 2>&1 || need="$need poppler-utils"
  [ -e /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ] || need="$need fonts-dejavu-core"
  dpkg -s fonts-wqy-microhei >/dev/null 2>&1 || need="$need fonts-wqy-microhei"  # CJK glyphs in PDF reports
  if [ -n "$need" ]; then
    echo "[install] apt packages:$need"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $need >/dev/null
  fi
fi

if ! $PY -c "import torch" >/dev/null 2>&1; then
  if command -v nvidia-smi >/dev/null 2>&1; then
    echo "[install] NVIDIA GPU found: installing the default (CUDA) torch build"
    $PY -m pip install -q "torch>=2.4"
  else
    echo "[install] no GPU: installing the CPU build of torch"
    $PY -m pip install -q "torch==2.13.0" || {
      echo "[install] torch==2.13.0 (CPU) was not found; install a CPU build of torch>=2.4 yourself, then rerun" >&2
      exit 1
    }
  fi
fi

if [ "$dev" = 1 ]; then
  $PY -m pip install -q -e ".[dev]"
else
  $PY -m pip install -q -e .
fi
echo "[install] done: $($PY -c 'import torch, provenance; print("torch", torch.__version__, "| provenance", provenance.__version__)')"
