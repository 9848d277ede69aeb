"""Import k-diffusion's `sampling` module as a test reference without its heavy package __init__.

k-diffusion's __init__ pulls in scikit-image, clip, wandb and more; its `sampling` module needs
only `utils`. We register an empty package object pointing at the installed folder, then import
the two submodules normally."""
import importlib, importlib.util, sys, types

def kdiff_sampling():
    "Return the installed `k_diffusion.sampling` module, or None when k-diffusion is not installed."
    if 'k_diffusion.sampling' in sys.modules: return sys.modules['k_diffusion.sampling']
    spec = importlib.util.find_spec('k_diffusion')
    if spec is None: return None
    pkg = types.ModuleType('k_diffusion')
    pkg.__path__ = list(spec.submodule_search_locations)
    sys.modules.setdefault('k_diffusion', pkg)
    return importlib.import_module('k_diffusion.sampling')
