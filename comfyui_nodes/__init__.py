"""TimeTuner nodes for ComfyUI (V3 schema): load, apply and tune τ sets; registry samplers; demo models.

ComfyUI imports this through the repository's top-level ``__init__.py`` (a ``git clone`` into
``custom_nodes/``) or through the shim ``timetuner comfyui-install`` writes for a pip install.
"""

from __future__ import annotations

import os

WEB_DIRECTORY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "web")


def _register_folder() -> None:
    import folder_paths

    from .paths import FOLDER

    if FOLDER not in folder_paths.folder_names_and_paths:
        folder_paths.add_model_folder_path(FOLDER, os.path.join(folder_paths.models_dir, FOLDER), is_default=True)
    roots, _ = folder_paths.folder_names_and_paths[FOLDER]
    folder_paths.folder_names_and_paths[FOLDER] = (roots, {".safetensors"})


async def comfy_entrypoint():
    from comfy_api.latest import ComfyExtension

    from .nodes_demo import DemoDecode, DemoDigitConditioning, DemoModelLoader
    from .nodes_sampling import RegistrySampler, Tune, TuneWithSigmas
    from .nodes_sets import ApplyTunedSet, LoadTunedSet, TunedSigmas

    _register_folder()

    class TimeTunerExtension(ComfyExtension):
        async def get_node_list(self):
            return [
                LoadTunedSet,
                ApplyTunedSet,
                TunedSigmas,
                RegistrySampler,
                Tune,
                TuneWithSigmas,
                DemoModelLoader,
                DemoDigitConditioning,
                DemoDecode,
            ]

    return TimeTunerExtension()
