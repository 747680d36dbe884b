"""Hugging Face transformers for the eval tools: the nGPT model files an export ships, and transformers' import.

transformers 5 depends on the Hub's `kernels` package and imports it by that name, which is also the name of this
repo's kernels.py, first on the path when the tools run from the repo root. import_transformers() puts the Hub's
package under the name while transformers loads its integration of it, then puts the repo's module back (the
training scripts import it by name when an export builds a checkpoint's model), and turns off from_pretrained's
default of swapping layers for Hub kernels (USE_HUB_KERNELS=NO), which would import `kernels` again; the exported
models run their plain torch forward, the one the export is checked with.
"""
import importlib
import importlib.metadata
import importlib.util
import os
import sys


def import_transformers():
    """The transformers module with the classes the tools use loaded, or None when it is not installed."""
    os.environ["USE_HUB_KERNELS"] = "NO"
    ours = sys.modules.pop("kernels", None)
    try:
        hub = importlib.metadata.distribution("kernels").locate_file("kernels")
        spec = importlib.util.spec_from_file_location("kernels", hub / "__init__.py",
                                                      submodule_search_locations=[str(hub)])
        sys.modules["kernels"] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules["kernels"])
    except (importlib.metadata.PackageNotFoundError, FileNotFoundError):
        sys.modules.pop("kernels", None)  # no Hub kernels: transformers does without them
    try:
        import transformers
        import transformers.integrations.hub_kernels  # noqa: F401 (the import that needs the Hub's kernels)
        from transformers import AutoModelForCausalLM, GenerationMixin, LlamaForCausalLM  # noqa: F401
        return transformers
    except ImportError:
        return None
    finally:
        sys.modules.pop("kernels", None)
        if ours is not None:
            sys.modules["kernels"] = ours
