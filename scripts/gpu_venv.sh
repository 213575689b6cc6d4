#!/usr/bin/env bash
# The virtualenv of `make test-gpu` (GPU_VENV, default .venv-gpu) around a Python that already has
# its CUDA torch (GPU_PYTHON): --system-site-packages sees that torch, and the package installs under
# a constraint torch==<installed version>, so torch is never replaced. With WHEELS=dir the install
# reads only that folder (`make wheels`): no index, no pip configuration, no network.
set -euo pipefail
GPU_PYTHON=${GPU_PYTHON:-python3}
GPU_VENV=${GPU_VENV:-.venv-gpu}
WHEELS=${WHEELS:-}

if [ ! -x "$GPU_VENV/bin/python" ]; then
  "$GPU_PYTHON" -m venv --system-site-packages "$GPU_VENV"
  # where GPU_PYTHON is itself a virtualenv's (some images keep torch in one), --system-site-packages
  # reaches only the base interpreter: a .pth file adds GPU_PYTHON's own site-packages behind ours
  purelib=$("$GPU_VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  "$GPU_PYTHON" -c 'import site; print("\n".join(site.getsitepackages()))' > "$purelib/gpu-image.pth"
fi
torch_version=$("$GPU_VENV/bin/python" -c 'import torch; print(torch.__version__)')
echo "torch==$torch_version" > "$GPU_VENV/keep-torch.txt"
# an NGC-style torch (2.11.0a0+git…) is a pre-release, which a range like torch>=2.4 admits only with --pre
pre=$("$GPU_VENV/bin/python" -c 'import re, torch; print("--pre" if re.search(r"(a|b|rc|dev)[0-9]*$", torch.__version__.split("+")[0]) else "")')
offline() {  # pip with nothing but the wheel folder: no config file, no index or link from the environment
  env -u PIP_INDEX_URL -u PIP_EXTRA_INDEX_URL -u PIP_FIND_LINKS -u PIP_CONSTRAINT PIP_CONFIG_FILE=/dev/null "$@"
}
if [ -n "$WHEELS" ]; then
  test -d "$WHEELS" || { echo "make test-gpu: WHEELS=$WHEELS is not a folder: fill one with \`make wheels WHEELS=$WHEELS\` on a machine with the registry"; exit 2; }
  offline "$GPU_VENV/bin/python" -m pip install --quiet --no-index --find-links "$WHEELS" setuptools wheel
  offline "$GPU_VENV/bin/python" -m pip install --quiet --no-index --find-links "$WHEELS" --no-build-isolation $pre \
    -c "$GPU_VENV/keep-torch.txt" -e '.[test]'
else
  "$GPU_VENV/bin/python" -m pip install --quiet $pre -c "$GPU_VENV/keep-torch.txt" -e '.[test]'
fi
after=$("$GPU_VENV/bin/python" -c 'import torch; print(torch.__version__)')
[ "$after" = "$torch_version" ] || { echo "make test-gpu: torch changed from $torch_version to $after"; exit 1; }
echo "$GPU_VENV: torch $after kept, $(cd "$GPU_VENV/bin" && pwd)/python ready"
