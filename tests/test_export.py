"Tests for miniai.export: identical predictions after a round trip, pickles refused (and never run), only marked miniai builders called, errors at export time."
import json
import pickle
from types import SimpleNamespace

import pytest
import torch
from torch import nn
import torch.nn.functional as F

from miniai.learner import Learner, TrainCB
from miniai.vision import image_dls, vision_learner
from miniai.export import export_description, load_learner, read_export
import miniai.interpret  # noqa: F401


def small_learner(seed=0):
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randint(0, 256, (48, 16, 16), dtype=torch.uint8, generator=g), torch.randint(0, 3, (48,), generator=g)
    dls = image_dls((x, y), (x[:16], y[:16]), bs=16, vocab=['a', 'b', 'c'], generator=g)
    torch.manual_seed(seed)
    learn = vision_learner(dls, 'resnet', pretrained=False, lin_ftrs=[8], device='cpu', progress=False)
    learn.fit_one_cycle(1, 1e-2)
    return learn, x


def test_round_trip_identical_predictions(tmp_path):
    learn, x = small_learner()
    learn.export(tmp_path / 'm.safetensors')
    l2 = load_learner(tmp_path / 'm.safetensors')
    p1, t1 = learn.get_preds(); p2, t2 = l2.get_preds(learn.dls.valid)
    assert torch.equal(p1, p2) and torch.equal(t1, t2)
    for k, v in learn.model.state_dict().items(): assert torch.equal(v, l2.model.state_dict()[k]), k
    assert l2.vocab == ['a', 'b', 'c'] and l2.task == 'single_label' and l2.loss_func is F.cross_entropy
    assert l2.predict(x[5])[1] == learn.predict(x[5])[1]
    assert read_export(tmp_path / 'm.safetensors')['model']['builder'] == 'miniai.vision.vision_model'


def test_pickles_are_refused_and_never_run(tmp_path):
    learn, _ = small_learner()
    marker = tmp_path / 'ran'
    class Evil:
        def __reduce__(self): return (open, (str(marker), 'w'))
    (tmp_path / 'evil.pkl').write_bytes(pickle.dumps(Evil()))
    torch.save({'model': learn.model.state_dict(), 'x': Evil()}, tmp_path / 'evil.pt')
    (tmp_path / 'old.pkl').write_bytes(pickle.dumps({'a': 1}, protocol=0))
    for nm in ('evil.pkl', 'evil.pt', 'old.pkl'):
        with pytest.raises(ValueError, match='pickle'): load_learner(tmp_path / nm)
    assert not marker.exists()
    (tmp_path / 'junk.bin').write_bytes(b'\x01' * 64)
    with pytest.raises(ValueError, match='not a safetensors'): load_learner(tmp_path / 'junk.bin')


def write_with_desc(path, desc, tensors=None):
    from safetensors.torch import save_file
    save_file(tensors or {'w': torch.zeros(1)}, str(path), metadata={'miniai': json.dumps(desc)})


def test_only_marked_miniai_builders_are_called(tmp_path):
    base = {'format': 'miniai.export', 'version': 1, 'vocab': None, 'task': None, 'loss': None, 'n_inp': 1}
    write_with_desc(tmp_path / 'a.safetensors', {**base, 'model': {'builder': 'os.system', 'kwargs': {'command': 'true'}}})
    with pytest.raises(ValueError, match='outside miniai'): load_learner(tmp_path / 'a.safetensors')
    write_with_desc(tmp_path / 'b.safetensors', {**base, 'model': {'builder': 'miniai.utils.atomic_write', 'kwargs': {'path': str(tmp_path / 'x'), 'data': 'hi'}}})
    with pytest.raises(ValueError, match='not a miniai model builder'): load_learner(tmp_path / 'b.safetensors')
    assert not (tmp_path / 'x').exists()
    write_with_desc(tmp_path / 'c.safetensors', {**base, 'version': 99, 'model': {'builder': 'miniai.vision.vision_model', 'kwargs': {}}})
    with pytest.raises(ValueError, match='newer'): load_learner(tmp_path / 'c.safetensors')
    from safetensors.torch import save_file
    save_file({'w': torch.zeros(1)}, str(tmp_path / 'd.safetensors'))
    with pytest.raises(ValueError, match='without miniai'): load_learner(tmp_path / 'd.safetensors')


def test_undescribable_models_fail_at_export(tmp_path):
    dls = SimpleNamespace(train=[], valid=[])
    learn = Learner(nn.Linear(3, 2), dls, F.mse_loss)
    with pytest.raises(TypeError, match='not made by a miniai builder'): learn.export(tmp_path / 'e.safetensors')
    assert not (tmp_path / 'e.safetensors').exists()
    learn.model.miniai_spec = {'builder': 'mine.make', 'kwargs': {'n': torch.tensor(3)}}
    with pytest.raises(TypeError, match='Tensor'): export_description(learn)


def test_user_builders_by_name(tmp_path):
    def make(n_in, n_out): return nn.Linear(n_in, n_out)
    torch.manual_seed(0)
    learn = Learner(make(3, 2), SimpleNamespace(train=[], valid=[]), F.mse_loss, cbs=[TrainCB()])
    learn.model.miniai_spec = {'builder': 'mine.make', 'kwargs': {'n_in': 3, 'n_out': 2}}
    learn.task = 'regression'
    learn.export(tmp_path / 'u.safetensors')
    with pytest.raises(ValueError, match='outside miniai'): load_learner(tmp_path / 'u.safetensors')
    l2 = load_learner(tmp_path / 'u.safetensors', builders={'mine.make': make})
    x = torch.randn(4, 3)
    assert torch.equal(l2.model(x), learn.model(x)) and l2.loss_func is F.mse_loss
