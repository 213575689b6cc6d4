"""Makes this folder's stand-in phase (``law_stand_in``) importable by the launcher it starts
(through ``launch.env`` PYTHONPATH) and by the tests under ``--import-mode=importlib``."""
import sys
from pathlib import Path

HERE = str(Path(__file__).parent)
if HERE not in sys.path:
    sys.path.insert(0, HERE)
