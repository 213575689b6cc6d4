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

test -x "$GPU_VENV/bin/python" || "$GPU_PYTHON" -m venv --system-site-packages "$GPU_VENV"
torch_version=$("$GPU_VENV/bin/python" -c 'import torch; print(torch.__version__)')
echo "torch==$torch_version" > "$GPU_VENV/keep-torch.txt"
# an NGC-style torch (2.11.0a0+git…) is a pre-release, which a range like torch>=2.4 admits only with --pre
pre=$("$GPU_VENV/bin/python" -c 'import re, torch; print("--pre" if re.search(r"(a|b|rc|dev)[0-9]*$", torch.__version__.split("+")[0]) else "")')
if [ -n "$WHEELS" ]; then
  test -d "$WHEELS" || { echo "make test-gpu: WHEELS=$WHEELS is not a folder: fill one with \`make wheels WHEELS=$WHEELS\` on a machine with the registry"; exit 2; }
  "$GPU_VENV/bin/python" -m pip install --quiet --no-index --find-links "$WHEELS" setuptools wheel
  "$GPU_VENV/bin/python" -m pip install --quiet --no-index --find-links "$WHEELS" --no-build-isolation $pre \
    -c "$GPU_VENV/keep-torch.txt" -e '.[test]'
else
  "$GPU_VENV/bin/python" -m pip install --quiet $pre -c "$GPU_VENV/keep-torch.txt" -e '.[test]'
fi
after=$("$GPU_VENV/bin/python" -c 'import torch; print(torch.__version__)')
[ "$after" = "$torch_version" ] || { echo "make test-gpu: torch changed from $torch_version to $after"; exit 1; }
export PATH="$(cd "$GPU_VENV/bin" && pwd):$PATH"
exec "$GPU_VENV/bin/python" scripts/test_gpu.py "$@"
