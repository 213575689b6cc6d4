#!/usr/bin/env bash
# `make test-gpu`: the single-GPU CI target (SPEC §12). Checks for a CUDA GPU first — without one it
# prints SKIPPED and exits 77 (the automake / ctest code for a skipped test), having tested nothing.
# Then a virtualenv that sees the image's own CUDA torch (--system-site-packages) gets the package
# installed around it, torch held at its installed version by a constraint (never replaced) — from
# the registry, or with WHEELS=dir only from that folder (`make wheels`), without network — and
# scripts/test_gpu.py runs the steps and writes runs/test-gpu/REPORT.md.
set -euo pipefail
GPU_PYTHON=${GPU_PYTHON:-python3}
GPU_VENV=${GPU_VENV:-.venv-gpu}
WHEELS=${WHEELS:-}

probe=$("$GPU_PYTHON" - <<'PY' 2>&1 || true
try:
    import torch
except Exception as error:  # no torch at all
    print(f"no-torch: {error}")
else:
    if torch.cuda.is_available():
        print(f"gpu: {torch.cuda.get_device_name(0)} (torch {torch.__version__}, CUDA {torch.version.cuda})")
    else:
        print(f"no-gpu: torch {torch.__version__} (CUDA build {torch.version.cuda}) sees no CUDA device")
PY
)
case "$probe" in
  gpu:*) echo "make test-gpu: ${probe#gpu: }" ;;
  *)
    reason="${probe#*: } ($GPU_PYTHON)"
    mkdir -p runs/test-gpu
    printf '# make test-gpu\n\nSKIPPED on %s, nothing was tested: %s.\n' "$(date -u '+%Y-%m-%d %H:%M UTC')" \
      "$reason" > runs/test-gpu/REPORT.md
    echo "make test-gpu: SKIPPED (exit 77), nothing was tested — $reason."
    echo "  Run it on a machine with one CUDA GPU and a CUDA build of torch (GPU_PYTHON=... names its Python)."
    exit 77 ;;
esac

GPU_PYTHON="$GPU_PYTHON" GPU_VENV="$GPU_VENV" WHEELS="$WHEELS" bash scripts/gpu_venv.sh
export PATH="$(cd "$GPU_VENV/bin" && pwd):$PATH"
exec "$GPU_VENV/bin/python" scripts/test_gpu.py "$@"
