"""ComfyUI entry point for a `git clone` of this repository into ComfyUI/custom_nodes/.

The packages (registry, timetuner_plugins, tuned_sets, comfyui_nodes) are used from this
checkout unless they are pip-installed in ComfyUI's environment. Install the requirements
in that environment first: `pip install -r requirements.txt`.
"""

import os
import sys

try:
    import timetuner_plugins  # noqa: F401  (pip-installed)
except ImportError:
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from comfyui_nodes import WEB_DIRECTORY, comfy_entrypoint  # noqa: E402,F401
