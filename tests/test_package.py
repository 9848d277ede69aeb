"""Package-wide checks: DESIGN.md's public names exist, each is defined once, library imports stay light."""
import importlib, subprocess, sys

import pytest

# DESIGN.md's table: module -> public names (course names first, then the + ones)
DESIGN = {
    'miniai.scratch.matmul': 'matmul_loops matmul_broadcast matmul_einsum',
    'miniai.scratch.meanshift': 'gaussian meanshift',
    'miniai.scratch.backprop': 'Module Lin Relu Mse Model',
    'miniai.training': 'accuracy report Dataset fit get_dls Sampler BatchSampler DataLoader collate',
    'miniai.datasets': 'inplace collate_dict show_image subplots get_grid show_images DataLoaders load_fashion_mnist',
    'miniai.conv': 'def_device conv to_device collate_device im2col conv2d',
    'miniai.learner': 'CancelFitException CancelBatchException CancelEpochException Callback run_cbs SingleBatchCB to_cpu '
                      'MetricsCB DeviceCB TrainCB ProgressCB with_cbs Learner TrainLearner MomentumLearner LRFinderCB lr_find',
    'miniai.activations': 'set_seed Hook Hooks HooksCallback append_stats get_hist get_min ActivationStats',
    'miniai.init': 'clean_ipython_hist clean_tb clean_mem BatchTransformCB GeneralRelu plot_func init_weights lsuv_init '
                   'get_model LayerNorm BatchNorm',
    'miniai.sgd': 'BaseSchedCB BatchSchedCB EpochSchedCB HasLearnCB RecorderCB SGD Momentum RMSProp Adam',
    'miniai.resnet': 'act_gr ResBlock',
    'miniai.augment': 'summary show_image_batch CapturePreds capture_preds rand_erase RandErase rand_copy RandCopy',
    'miniai.accel': 'MixedPrecision AccelerateCB',
    'miniai.vae': 'VAE AutoencoderKL DiagonalGaussian',
    # practitioner workflows (notebooks 40-47)
    'miniai.finetune': 'fit_one_cycle freeze freeze_to unfreeze fine_tune',
    'miniai.vision': 'vision_learner',
    'miniai.segmentation': 'unet_learner',
    'miniai.interpret': 'ClassificationInterpretation',
    'miniai.export': 'export load_learner',
    'miniai.multilabel': 'accuracy_multi',
    'miniai.tabular': 'tabular_learner',
    'miniai.collab': 'collab_learner',
    'miniai.app': 'learner_app',
    'miniai.latent': 'LatentCache LatentDiffusion decode_latents',
    'miniai.text': 'WordTokenizer TextEncoder CrossAttention TextUNetModel TextToImage generate',
    'miniai.sd': 'UNet2DConditionModel CLIPTextModel StableDiffusion',
}
PRESENT = {m: n for m, n in DESIGN.items() if importlib.util.find_spec(m) is not None}
FOUNDATIONS = [m for m in DESIGN if m.startswith('miniai.scratch') or m in ('miniai.training', 'miniai.datasets', 'miniai.conv')]


def test_foundation_modules_exist():
    missing = [m for m in FOUNDATIONS if m not in PRESENT]
    assert not missing, f"missing modules: {missing}"


@pytest.mark.parametrize('mod', sorted(PRESENT))
def test_design_names(mod):
    m = importlib.import_module(mod)
    names = PRESENT[mod].split()
    missing = [n for n in names if not hasattr(m, n)]
    assert not missing, f"{mod} lacks {missing}"
    not_exported = [n for n in names if n not in getattr(m, '__all__', ())]
    assert not not_exported, f"{mod}.__all__ lacks {not_exported} (so `from {mod} import *` misses them)"


def _library_modules():
    import pkgutil, miniai
    return sorted(i.name for i in pkgutil.walk_packages(miniai.__path__, 'miniai.') if not i.name.endswith('_modidx'))


def test_each_name_defined_once():
    "No public name is defined in two modules (a package __init__ re-exporting its submodules is fine)."
    owner = {}
    for mod in _library_modules():
        m = importlib.import_module(mod)
        for n in getattr(m, '__all__', ()):
            obj = getattr(m, n)
            home = getattr(obj, '__module__', None)
            if home is not None and home != mod and home.startswith('miniai'): continue  # a re-export
            assert n not in owner, f"{n} is defined in both {owner[n]} and {mod}"
            owner[n] = mod


def test_every_exported_name_has_a_docstring():
    import inspect
    missing = []
    for mod in _library_modules():
        m = importlib.import_module(mod)
        for n in getattr(m, '__all__', ()):
            obj = getattr(m, n)
            if (inspect.isfunction(obj) or inspect.isclass(obj)) and obj.__module__ == mod and not inspect.getdoc(obj):
                missing.append(f'{mod}.{n}')
    assert not missing, f"no docstring: {missing}"


@pytest.mark.parametrize('mod', ['miniai.training', 'miniai.conv', 'miniai.datasets', 'miniai.scratch.matmul', 'miniai.app'])
def test_imports_stay_light(mod):
    "Heavy optional packages load only when a function needs them."
    code = (f"import sys, {mod}; heavy = [m for m in ('matplotlib', 'datasets', 'accelerate', 'scipy', 'numba', 'gradio') "
            f"if m in sys.modules]; print(','.join(heavy))")
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == '', f"importing {mod} loaded {out}"


def test_practitioner_learner_methods():
    "Importing miniai.finetune / miniai.interpret / miniai.export adds fastai's Learner methods (DESIGN.md: Learner methods)."
    import miniai.finetune, miniai.interpret, miniai.export  # noqa: F401
    from miniai.learner import Learner
    missing = [n for n in 'fit_one_cycle freeze freeze_to unfreeze fine_tune get_preds predict export'.split() if not hasattr(Learner, n)]
    assert not missing, f"Learner lacks {missing}"


def test_no_cuda_calls():
    "No hard-coded .cuda(): devices come from def_device or the inputs."
    import pathlib, re, miniai
    hits = [f"{p.name}:{i+1}" for p in pathlib.Path(miniai.__file__).parent.rglob('*.py')
            for i, line in enumerate(p.read_text().splitlines()) if re.search(r'\.cuda\(\)', line)]
    assert not hits, hits
