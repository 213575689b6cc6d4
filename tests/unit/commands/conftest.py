"""Makes this folder's helper modules (``run_dir_builder``) importable by its tests under
``--import-mode=importlib``, which does not put test folders on ``sys.path``."""
import sys
from pathlib import Path

HERE = str(Path(__file__).parent)
if HERE not in sys.path:
    sys.path.insert(0, HERE)
