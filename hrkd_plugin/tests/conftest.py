"""Make `hrkd_plugin` importable from a source checkout that has not installed it."""

from __future__ import annotations

import sys
from pathlib import Path

try:
    import hrkd_plugin.graph  # noqa: F401
except ImportError:
    # From the repository root, `hrkd_plugin` may have resolved to the project folder as a namespace package: forget it.
    for name in [name for name in sys.modules if name == "hrkd_plugin" or name.startswith("hrkd_plugin.")]:
        del sys.modules[name]
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
