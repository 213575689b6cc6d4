"""Settings every test process and the processes it starts share.

DeepSpeed's JIT-built CPU op goes to the virtualenv's own ``torch-extensions`` folder (where
``make install`` built it, scripts/prebuild_ops.py) unless ``TORCH_EXTENSIONS_DIR`` is set: the
shared ``~/.cache/torch_extensions`` is rebuilt whenever a process of another virtualenv, or with
another ninja, uses it, and a rebuild inside a multi-rank test costs minutes on two cores.
"""
import os
import sys
from pathlib import Path

os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(Path(sys.prefix) / "torch-extensions"))
