"""miniai.datasets: IDX reading, every data source, the cache, the fast path, plotting."""
import gzip, lzma, time, warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF

import miniai.datasets as mds
from miniai.datasets import (DataLoaders, TensorLoader, collate_dict, dataset_tensors, inplace, load_fashion_mnist,
                             read_fmnist_split, read_idx, show_images, to_float_images)

STEMS = {'train': ('train-images-idx3-ubyte', 'train-labels-idx1-ubyte'),
         'test': ('t10k-images-idx3-ubyte', 't10k-labels-idx1-ubyte')}


def idx_bytes(a, dtype_code=8):
    "IDX encoding of uint8 array `a`, written here independently of miniai."
    return bytes([0, 0, dtype_code, a.ndim]) + b''.join(int(s).to_bytes(4, 'big') for s in a.shape) + a.tobytes()


def write_fmnist(folder, n_train=30, n_test=12, seed=0, compress=gzip.compress, ext='.gz'):
    "Write a tiny random Fashion-MNIST-shaped IDX folder; return its arrays."
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for split, n in (('train', n_train), ('test', n_test)):
        x = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        y = rng.integers(0, 10, n, dtype=np.uint8)
        for stem, a in zip(STEMS[split], (x, y)): (folder/(stem+ext)).write_bytes(compress(idx_bytes(a)))
        arrays[split] = x, y
    return arrays


@pytest.fixture
def no_sources(monkeypatch, tmp_path):
    "No env var, no Debian folder, no hub: only what a test passes explicitly."
    monkeypatch.delenv('MINIAI_DATA', raising=False)
    monkeypatch.setattr(mds, 'DEBIAN_FMNIST', tmp_path/'no-debian')
    monkeypatch.setenv('MINIAI_OFFLINE', '1')
    return tmp_path


@pytest.fixture(scope='module')
def sample_dd(tmp_path_factory):
    "The packaged sample (real Fashion-MNIST images) through a fresh cache."
    return load_fashion_mnist(mds.SAMPLE_FMNIST, cache=tmp_path_factory.mktemp('cache'))


# --- IDX files -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize('compress', [gzip.compress, lzma.compress, lambda b: b])
def test_read_idx_roundtrip(tmp_path, compress):
    a = np.random.default_rng().integers(0, 256, (5, 3, 4), dtype=np.uint8)
    (tmp_path/'f').write_bytes(compress(idx_bytes(a)))
    out = read_idx(tmp_path/'f')
    assert out.shape == a.shape and (out == a).all()


def test_read_idx_truncated_gzip(tmp_path):
    data = gzip.compress(idx_bytes(np.zeros((10, 28, 28), np.uint8) + 7))
    (tmp_path/'t.gz').write_bytes(data[:len(data)//2])
    with pytest.raises(ValueError, match=r"t\.gz: cannot decompress.*truncated or corrupt"): read_idx(tmp_path/'t.gz')


def test_read_idx_short_data(tmp_path):
    (tmp_path/'s').write_bytes(idx_bytes(np.ones((4, 2), np.uint8))[:-3])
    with pytest.raises(ValueError, match=r"s: header says shape \(4, 2\) \(8 bytes of data\) but the file holds 5"):
        read_idx(tmp_path/'s')


def test_read_idx_bad_magic(tmp_path):
    (tmp_path/'m').write_bytes(idx_bytes(np.ones(3, np.uint8), dtype_code=0x0D))
    with pytest.raises(ValueError, match=r"m: bad IDX magic number 0x00000d01"): read_idx(tmp_path/'m')
    (tmp_path/'h').write_bytes(b'\x00\x00')
    with pytest.raises(ValueError, match="too short"): read_idx(tmp_path/'h')


def test_read_idx_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such IDX file"): read_idx(tmp_path/'nope')


def test_split_count_mismatch(tmp_path):
    write_fmnist(tmp_path, n_train=5)
    (tmp_path/'train-labels-idx1-ubyte.gz').write_bytes(gzip.compress(idx_bytes(np.zeros(4, np.uint8))))
    with pytest.raises(ValueError, match=r"train-images-idx3-ubyte\.gz holds 5 images but .*train-labels-idx1-ubyte\.gz holds 4 labels"):
        read_fmnist_split(tmp_path, 'train')


def test_split_bad_shape_and_labels(tmp_path):
    write_fmnist(tmp_path)
    (tmp_path/'t10k-images-idx3-ubyte.gz').write_bytes(gzip.compress(idx_bytes(np.zeros((12, 14, 14), np.uint8))))
    with pytest.raises(ValueError, match=r"expected images of shape \(N, 28, 28\), got \(12, 14, 14\)"):
        read_fmnist_split(tmp_path, 'test')
    (tmp_path/'train-labels-idx1-ubyte.gz').write_bytes(gzip.compress(idx_bytes(np.full(30, 10, np.uint8))))
    with pytest.raises(ValueError, match="labels must be 0-9, found 10"): read_fmnist_split(tmp_path, 'train')
    with pytest.raises(ValueError, match="split must be one of"): read_fmnist_split(tmp_path, 'valid')


def test_split_missing_file(tmp_path):
    write_fmnist(tmp_path)
    (tmp_path/'t10k-labels-idx1-ubyte.gz').unlink()
    with pytest.raises(FileNotFoundError, match=r"no t10k-labels-idx1-ubyte\.gz"): read_fmnist_split(tmp_path, 'test')


# --- sources and cache -----------------------------------------------------------------------------------------

def test_load_from_path(no_sources, tmp_path):
    arrays = write_fmnist(tmp_path/'src', ext='')
    dd = load_fashion_mnist(tmp_path/'src', cache=tmp_path/'cache')
    assert set(dd) == {'train', 'test'} and len(dd['train']) == 30 and len(dd['test']) == 12
    assert dd['train'].features == mds.fmnist_features()
    assert dd['train'].features['label'].names == list(mds.FMNIST_CLASSES)
    for split, (x, y) in arrays.items():
        for i in (0, 5, len(y)-1):  # original order, exact pixels
            row = dd[split][i]
            assert row['image'].size == (28, 28) and (np.asarray(row['image']) == x[i]).all() and row['label'] == y[i]


def test_second_load_uses_cache(no_sources, tmp_path, monkeypatch):
    write_fmnist(tmp_path/'src')
    first = load_fashion_mnist(tmp_path/'src', cache=tmp_path/'cache')
    def boom(*a, **k): raise AssertionError('IDX files read again despite the cache')
    monkeypatch.setattr(mds, 'read_fmnist_split', boom)
    t = time.perf_counter()
    again = load_fashion_mnist(tmp_path/'src', cache=tmp_path/'cache')
    print(f'cached load: {time.perf_counter()-t:.3f}s')
    assert again['test']['label'] == first['test']['label']


def test_changed_files_refresh_cache(no_sources, tmp_path):
    write_fmnist(tmp_path/'src', seed=1)
    a = load_fashion_mnist(tmp_path/'src', cache=tmp_path/'cache')
    arrays = write_fmnist(tmp_path/'src', n_test=7, seed=2)
    b = load_fashion_mnist(tmp_path/'src', cache=tmp_path/'cache')
    assert len(a['test']) == 12 and len(b['test']) == 7 and b['test']['label'] == arrays['test'][1].tolist()


def test_corrupt_cache_rebuilt(no_sources, tmp_path):
    write_fmnist(tmp_path/'src')
    load_fashion_mnist(tmp_path/'src', cache=tmp_path/'cache')
    for f in (tmp_path/'cache').rglob('*.arrow'): f.write_bytes(b'garbage')
    with pytest.warns(UserWarning, match='unreadable Fashion-MNIST cache'):
        dd = load_fashion_mnist(tmp_path/'src', cache=tmp_path/'cache')
    assert len(dd['train']) == 30


def test_env_var_source(no_sources, tmp_path, monkeypatch):
    arrays = write_fmnist(tmp_path/'env', n_train=9)
    monkeypatch.setenv('MINIAI_DATA', str(tmp_path/'env'))
    dd = load_fashion_mnist(cache=tmp_path/'cache')
    assert len(dd['train']) == 9 and dd['train']['label'] == arrays['train'][1].tolist()


def test_explicit_path_errors(no_sources, tmp_path):
    with pytest.raises(FileNotFoundError, match="not a folder"): load_fashion_mnist(tmp_path/'absent', cache=tmp_path/'c')
    (tmp_path/'empty').mkdir()
    with pytest.raises(FileNotFoundError, match="no train-images-idx3-ubyte.gz"): load_fashion_mnist(tmp_path/'empty', cache=tmp_path/'c')


def test_nothing_found_lists_every_place(no_sources, tmp_path):
    with pytest.raises(FileNotFoundError) as e: load_fashion_mnist(cache=tmp_path/'cache', sample=False)
    msg = str(e.value)
    for place in ('path argument', 'MINIAI_DATA', 'cache', 'no-debian', 'Hugging Face hub', 'packaged sample', 'apt-get install dataset-fashion-mnist'):
        assert place in msg, place


def test_sample_fallback_warns(no_sources, tmp_path):
    with pytest.warns(UserWarning, match='SAMPLE shipped with miniai'):
        dd = load_fashion_mnist(cache=tmp_path/'cache')
    assert (len(dd['train']), len(dd['test'])) == (10_000, 2_000)
    assert np.bincount(dd['train']['label']).tolist() == [1000]*10 and np.bincount(dd['test']['label']).tolist() == [200]*10
    assert not (tmp_path/'cache'/'fashion_mnist'/'full').exists()  # a sample never poses as the full set


def test_debian_source_fills_full_cache(no_sources, tmp_path, monkeypatch):
    arrays = write_fmnist(tmp_path/'deb')
    monkeypatch.setattr(mds, 'DEBIAN_FMNIST', tmp_path/'deb')
    dd = load_fashion_mnist(cache=tmp_path/'cache')
    assert (tmp_path/'cache'/'fashion_mnist'/'full'/'dataset_dict.json').is_file()
    monkeypatch.setattr(mds, 'DEBIAN_FMNIST', tmp_path/'gone')  # the cache now comes first
    assert load_fashion_mnist(cache=tmp_path/'cache')['train']['label'] == arrays['train'][1].tolist() == dd['train']['label']


def _free_port():
    import socket
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def test_hub_probe_never_hangs(monkeypatch):
    import os, urllib.request
    for k in ('HF_HUB_OFFLINE', 'HF_DATASETS_OFFLINE', 'MINIAI_OFFLINE'): monkeypatch.delenv(k, raising=False)
    monkeypatch.setattr(urllib.request, 'urlopen', lambda *a, **k: time.sleep(30))  # a network that never answers
    t = time.perf_counter()
    assert mds.hub_reachable(timeout=0.5) is False
    assert time.perf_counter() - t < 5
    assert os.environ['HF_HUB_OFFLINE'] == '1' and os.environ['HF_DATASETS_OFFLINE'] == '1'


def test_hub_probe_refused(monkeypatch):
    for k in ('HF_HUB_OFFLINE', 'HF_DATASETS_OFFLINE', 'MINIAI_OFFLINE'): monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv('HF_ENDPOINT', f'http://127.0.0.1:{_free_port()}')  # nothing listens there
    assert mds.hub_reachable(timeout=2) is False


def test_hub_probe_respects_offline_flag(monkeypatch):
    import urllib.request
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    monkeypatch.setattr(urllib.request, 'urlopen', lambda *a, **k: pytest.fail('probed despite offline flag'))
    assert mds.hub_reachable() is False


@pytest.mark.skipif(not Path('/usr/share/datasets/fashion-mnist').is_dir(),
                    reason="Debian package dataset-fashion-mnist not installed (apt-get install dataset-fashion-mnist)")
def test_real_files(tmp_path):
    dd = load_fashion_mnist('/usr/share/datasets/fashion-mnist', cache=tmp_path)
    assert (len(dd['train']), len(dd['test'])) == (60_000, 10_000)
    x, y = read_fmnist_split('/usr/share/datasets/fashion-mnist', 'test')
    assert np.bincount(y).tolist() == [1000]*10
    xs, ys = dataset_tensors(dd['test'])
    assert (xs.numpy() == x).all() and (ys.numpy() == y).all()
    assert dd['train'][0]['label'] == 9  # the first training image is an ankle boot
    tx, ty = dataset_tensors(dd['train'])
    assert tx.shape == (60_000, 28, 28) and np.bincount(ty.numpy()).tolist() == [6000]*10


# --- the fast path ---------------------------------------------------------------------------------------------

def test_dataset_tensors_matches_items(sample_dd):
    for ds in (sample_dd['test'], sample_dd['test'].shuffle(seed=3).select(range(50)), sample_dd['train'].select([9, 2, 7000])):
        xs, ys = dataset_tensors(ds)
        assert xs.dtype == torch.uint8 and ys.dtype == torch.int64 and len(xs) == len(ds)
        for i in (0, len(ds)//2, len(ds)-1):
            assert (xs[i].numpy() == np.asarray(ds[i]['image'])).all() and ys[i] == ds[i]['label']


def test_contiguous_select_keeps_the_full_copy(sample_dd):
    full = sample_dd['train']
    npz = mds._npz_path(full.data.path)
    part = full.select(range(100, 400))  # datasets slices the table here instead of mapping indices
    assert part._indices is None and part.data.num_rows == 300
    xs, ys = dataset_tensors(part)
    assert (xs[0].numpy() == np.asarray(full[100]['image'])).all() and ys.tolist() == full['label'][100:400]
    assert len(np.load(npz)['labels']) == len(full)  # the sliced view did not overwrite the whole-split copy
    part2 = part.select(range(50, 60))  # a slice of a slice
    assert dataset_tensors(part2)[1].tolist() == full['label'][150:160]


def test_dataset_tensors_in_memory_dataset():
    arrays = {'train': (np.random.default_rng().integers(0, 256, (6, 28, 28), dtype=np.uint8), np.arange(6) % 10)}
    ds = mds.dd_from_arrays(arrays)['train']  # not on disk: decoded on the spot
    xs, ys = dataset_tensors(ds)
    assert (xs.numpy() == arrays['train'][0]).all() and ys.tolist() == list(range(6))


def test_dataset_tensors_errors(sample_dd):
    with pytest.raises(TypeError, match="plain datasets.Dataset"): dataset_tensors(sample_dd['test'].with_format('torch'))
    with pytest.raises(ValueError, match="no column 'pixels'"): dataset_tensors(sample_dd['test'], x='pixels')


def test_fast_path_equals_course_path(sample_dd):
    @inplace
    def transformi(b): b['image'] = [TF.to_tensor(o) for o in b['image']]
    small = {'train': sample_dd['train'].select(range(300)), 'test': sample_dd['test'].select(range(200))}
    slow = DataLoaders.from_dd({k: v.with_transform(transformi) for k, v in small.items()}, 32)
    fast = DataLoaders.from_dd(small, 32)
    assert isinstance(fast.train, TensorLoader) and not isinstance(slow.valid, TensorLoader)
    sb, fb = list(slow.valid), list(fast.valid)
    assert len(sb) == len(fb) == 4
    for (xa, ya), (xb, yb) in zip(sb, fb):
        torch.testing.assert_close(xa, xb, rtol=0, atol=0)
        assert (ya == yb).all() and xb.shape[1:] == (1, 28, 28)
    # the training loader shuffles, covering every item once per epoch
    ys = torch.cat([yb for _, yb in fast.train])
    assert sorted(ys.tolist()) == sorted(small['train']['label']) and ys.tolist() != small['train']['label']


def test_from_dd_dicts_and_kwargs(sample_dd):
    small = {'train': sample_dd['train'].select(range(100)), 'test': sample_dd['test'].select(range(40))}
    dls = DataLoaders.from_dd(small, 16, as_tuple=False, drop_last=True, generator=torch.Generator().manual_seed(0))
    b = next(iter(dls.train))
    assert set(b) == {'image', 'label'} and b['image'].shape == (16, 1, 28, 28) and len(dls.train) == 6
    g = lambda: torch.Generator().manual_seed(5)
    one = [yb for _, yb in DataLoaders.from_dd(small, 16, generator=g()).train]
    two = [yb for _, yb in DataLoaders.from_dd(small, 16, generator=g()).train]
    assert all((a == b).all() for a, b in zip(one, two))
    with pytest.raises(ValueError, match="needs a train and a valid split"): DataLoaders.from_dd({'train': small['train']}, 8)


def test_tensor_loader():
    xs, ys = torch.randint(0, 256, (23, 28, 28), dtype=torch.uint8), torch.arange(23)
    tl = TensorLoader(xs, ys, 5)
    batches = list(tl)
    assert len(tl) == 5 and [len(b[1]) for b in batches] == [5, 5, 5, 5, 3]
    assert torch.cat([b[1] for b in batches]).tolist() == list(range(23))
    torch.testing.assert_close(batches[0][0], xs[:5].float().unsqueeze(1)/255)
    assert len(TensorLoader(xs, ys, 5, drop_last=True)) == 4
    with pytest.raises(ValueError, match="differ in length"): TensorLoader(xs, ys[:3], 5)
    with pytest.raises(ValueError, match="positive int"): TensorLoader(xs, ys, 0)


def test_to_float_images_matches_to_tensor():
    x = torch.randint(0, 256, (3, 5, 6, 3), dtype=torch.uint8)
    from PIL import Image
    for i in range(3): torch.testing.assert_close(to_float_images(x)[i], TF.to_tensor(Image.fromarray(x[i].numpy())))


def test_collate_dict_and_inplace(sample_dd):
    ds = sample_dd['test'].select(range(4)).with_format('torch')
    xb, yb = collate_dict(ds)([ds[i] for i in range(4)])
    assert xb.shape[0] == 4 and xb.shape[-2:] == (28, 28) and yb.tolist() == [int(ds[i]['label']) for i in range(4)]
    @inplace
    def add(b): b['n'] = 1
    d = {}
    assert add(d) is d and d == {'n': 1}


def test_show_images_headless(sample_dd):
    import matplotlib
    matplotlib.use('Agg')
    xs, ys = dataset_tensors(sample_dd['test'].select(range(7)))
    fig = show_images(to_float_images(xs), titles=[str(int(y)) for y in ys])
    visible = [ax for ax in fig.axes if ax.get_images()]
    assert len(visible) == 7 and visible[0].get_title() == str(int(ys[0]))
    with pytest.raises(ValueError, match="n >= 1"): mds.get_grid(0)
    with pytest.raises(ValueError, match="a 2x2 grid has room for 4 images, not 7"):  # not 4 shown and 3 silently dropped
        show_images(to_float_images(xs), nrows=2, ncols=2)


def test_atomic_write(tmp_path):
    import os
    mds.atomic_write(tmp_path/'a'/'f.txt', 'hello')
    assert (tmp_path/'a'/'f.txt').read_text() == 'hello'
    mask = os.umask(0); os.umask(mask)
    assert (tmp_path/'a'/'f.txt').stat().st_mode & 0o777 == 0o666 & ~mask  # not mkstemp's private 0600
    mds.atomic_write(tmp_path/'a'/'f.txt', lambda f: f.write(b'new'))
    assert (tmp_path/'a'/'f.txt').read_bytes() == b'new'
    def boom(f):
        f.write(b'partial')
        raise RuntimeError('crash mid-write')
    with pytest.raises(RuntimeError, match='crash mid-write'): mds.atomic_write(tmp_path/'a'/'f.txt', boom)
    assert (tmp_path/'a'/'f.txt').read_bytes() == b'new'  # the old file survives a failed write
    assert [p.name for p in (tmp_path/'a').iterdir()] == ['f.txt']  # and no temp file is left behind


# --- the tensor cache never serves data that differs from the dataset ------------------------------------------

def _decoded(ds, x='image', y='label'):
    "Images and labels of `ds` read row by row through `datasets` itself: the reference."
    rows = list(ds)
    return np.stack([np.asarray(r[x]) for r in rows]), np.array([r[y] for r in rows])


def _npz_of(ds):
    "The one uint8 copy beside `ds`'s Arrow file (found by looking, not through miniai's naming)."
    (npz,) = Path(ds.data.path).parent.glob('*.npz')
    return npz


@pytest.fixture
def disk_ds(tmp_path):
    "A 60-row Fashion-MNIST-like split saved to disk and loaded back, with its uint8 copy already written."
    import datasets
    rng = np.random.default_rng(11)
    arrays = {'train': (rng.integers(0, 256, (60, 28, 28), dtype=np.uint8), rng.integers(0, 10, 60))}
    mds.dd_from_arrays(arrays)['train'].save_to_disk(str(tmp_path/'ds'))
    ds = datasets.load_from_disk(str(tmp_path/'ds'))
    dataset_tensors(ds)
    assert _npz_of(ds).is_file()
    return ds


def _ops():
    import datasets
    feats = lambda dtype: datasets.Features({'image': datasets.Image(), 'label': datasets.Value(dtype)})
    return {
        'map labels': lambda ds: ds.map(lambda b: {'label': [(l + 3) % 10 for l in b['label']]}, batched=True),
        'map images': lambda ds: ds.map(lambda b: {'image': [im.transpose(0) for im in b['image']]}, batched=True),
        'map keep_in_memory': lambda ds: ds.map(lambda b: {'label': [9 - l for l in b['label']]}, batched=True, keep_in_memory=True),
        'cast': lambda ds: ds.cast(feats('int32')),
        'cast_column RGB': lambda ds: ds.cast_column('image', datasets.Image(mode='RGB')),
        'filter': lambda ds: ds.filter(lambda b: [l % 2 == 0 for l in b['label']], batched=True),
        'sort': lambda ds: ds.sort('label'),
        'shuffle': lambda ds: ds.shuffle(seed=1),
        'select': lambda ds: ds.select([5, 3, 59, 0]),
        'select contiguous': lambda ds: ds.select(range(7, 30)),
        'train_test_split': lambda ds: ds.train_test_split(0.25, seed=2)['test'],
        'with_format and back': lambda ds: ds.with_format('torch').with_format(None),
        'flatten_indices': lambda ds: ds.shuffle(seed=3).flatten_indices(),
        'replace a column': lambda ds: ds.remove_columns('label').add_column('label', [i % 10 for i in range(len(ds))]),
        'concatenate': lambda ds: datasets.concatenate_datasets([ds.select(range(10, 20)), ds.select(range(5))]),
        'rename twice': lambda ds: ds.rename_column('label', 'l').rename_column('l', 'label'),
    }


@pytest.mark.parametrize('op', list(_ops()))
def test_tensors_follow_datasets_operations(disk_ds, op):
    ds = _ops()[op](disk_ds)
    xs, ys = dataset_tensors(ds)
    rx, ry = _decoded(ds)
    assert xs.shape == rx.shape and (xs.numpy() == rx).all(), op
    assert ys.tolist() == ry.tolist() and ys.dtype == torch.int64, op


def test_from_dd_after_map_serves_the_mapped_data(disk_ds):
    "The course's pattern: transform a DatasetDict with map, then build loaders; they must see the mapped labels."
    import datasets
    dd = datasets.DatasetDict({'train': disk_ds, 'test': disk_ds.select(range(20))})
    mapped = dd.map(lambda b: {'label': [(l + 1) % 10 for l in b['label']]}, batched=True)
    dls = DataLoaders.from_dd(mapped, 8)
    ys = torch.cat([yb for _, yb in dls.valid])
    assert ys.tolist() == mapped['test']['label'] != dd['test']['label']


def test_truncated_npz_is_rebuilt_with_a_warning(disk_ds):
    npz = _npz_of(disk_ds)
    good = npz.read_bytes()
    npz.write_bytes(good[:len(good)//2])
    with pytest.warns(UserWarning, match='unreadable tensor cache'):
        xs, ys = dataset_tensors(disk_ds)
    rx, ry = _decoded(disk_ds)
    assert (xs.numpy() == rx).all() and ys.tolist() == ry.tolist()
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        dataset_tensors(disk_ds)  # rebuilt: read quietly now
    assert np.load(npz)['labels'].tolist() == ry.tolist()


def test_npz_of_other_data_is_not_used(disk_ds, tmp_path):
    "A copy made from another Arrow file (here: another split's, copied over) is ignored, not served."
    import datasets
    rng = np.random.default_rng(12)
    mds.dd_from_arrays({'t': (rng.integers(0, 256, (60, 28, 28), dtype=np.uint8), rng.integers(0, 10, 60))})['t'].save_to_disk(str(tmp_path/'other'))
    other = datasets.load_from_disk(str(tmp_path/'other'))
    dataset_tensors(other)
    _npz_of(disk_ds).write_bytes(_npz_of(other).read_bytes())
    xs, ys = dataset_tensors(disk_ds)
    rx, ry = _decoded(disk_ds)
    assert (xs.numpy() == rx).all() and ys.tolist() == ry.tolist()


def test_float_labels_keep_their_values():
    import datasets
    feats = datasets.Features({'image': datasets.Image(), 'label': datasets.Value('float32')})
    ims = [{'bytes': mds._png(np.full((4, 4), i, np.uint8)), 'path': None} for i in range(3)]
    ds = datasets.Dataset.from_dict({'image': ims, 'label': [0.5, 1.25, -2.0]}, features=feats)
    _, ys = dataset_tensors(ds)
    assert ys.dtype == torch.float32 and ys.tolist() == [0.5, 1.25, -2.0]


def test_dataset_tensors_refuses_what_it_cannot_represent():
    import datasets
    png = lambda a: {'bytes': mds._png(a), 'path': None}
    two = datasets.Dataset.from_dict({'image': [png(np.zeros((4, 4), np.uint8)), png(np.zeros((5, 4), np.uint8))], 'label': [0, 1]},
                                     features=datasets.Features({'image': datasets.Image(), 'label': datasets.Value('int64')}))
    with pytest.raises(ValueError, match=r"differ in shape: \(4, 4\) in row 0, \(5, 4\) in row 1"): dataset_tensors(two)
    with pytest.raises(TypeError, match="decode=False"): dataset_tensors(two.cast_column('image', datasets.Image(decode=False)))
    with pytest.raises(TypeError, match="'label' holds object values; dataset_tensors needs numeric labels"):
        dataset_tensors(two.cast_column('label', datasets.Value('string')))


def test_to_float_images_refuses_floats():
    with pytest.raises(TypeError, match="uint8"): to_float_images(torch.rand(2, 5, 5))
    with pytest.raises(TypeError, match="uint8"): TensorLoader(torch.rand(4, 5, 5), torch.zeros(4), 2).__iter__().__next__()


def test_from_dd_num_workers_warns_and_stays_fast(sample_dd):
    small = {'train': sample_dd['train'].select(range(64)), 'test': sample_dd['test'].select(range(32))}
    with pytest.warns(UserWarning, match=r"num_workers=4 is not used.*whole uint8 tensors"):
        dls = DataLoaders.from_dd(small, 16, num_workers=4, persistent_workers=True)
    assert isinstance(dls.train, TensorLoader) and isinstance(dls.valid, TensorLoader)
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        DataLoaders.from_dd(small, 16, num_workers=0)  # nothing ignored: no warning
    with pytest.raises(ValueError, match="num_workers must be a non-negative int"): DataLoaders.from_dd(small, 16, num_workers=-1)
    with pytest.raises(ValueError, match="persistent_workers=True needs num_workers > 0"):
        DataLoaders.from_dd(small, 16, persistent_workers=True)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA warning")
def test_pin_memory_without_cuda_warns(sample_dd):
    small = {'train': sample_dd['train'].select(range(64)), 'test': sample_dd['test'].select(range(32))}
    with pytest.warns(UserWarning, match="pin_memory=True but no CUDA device"):
        dls = DataLoaders.from_dd(small, 16, pin_memory=True)
    assert not dls.train.pin_memory


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_pin_memory_with_cuda(sample_dd):
    small = {'train': sample_dd['train'].select(range(64)), 'test': sample_dd['test'].select(range(32))}
    xb, yb = next(iter(DataLoaders.from_dd(small, 16, pin_memory=True).train))
    assert xb.is_pinned() and yb.is_pinned()


def test_from_dd_as_tuple_and_collate_fn_on_the_torch_path(sample_dd):
    @inplace
    def transformi(b): b['image'] = [TF.to_tensor(o) for o in b['image']]
    small = {k: sample_dd[k].select(range(40)).with_transform(transformi) for k in ('train', 'test')}
    b = next(iter(DataLoaders.from_dd(small, 8, as_tuple=False).valid))
    assert isinstance(b, dict) and b['image'].shape == (16, 1, 28, 28) and b['label'].shape == (16,)
    seen = []
    def collate(rows):
        seen.append(len(rows))
        return collate_dict(small['train'])(rows)
    xb, yb = next(iter(DataLoaders.from_dd(small, 8, collate_fn=collate).train))
    assert seen == [8] and xb.shape == (8, 1, 28, 28)
    with pytest.raises(ValueError, match="as_tuple=False asks for dict batches"): DataLoaders.from_dd(small, 8, as_tuple=False, collate_fn=collate)


def test_make_fmnist_sample_is_all_or_nothing(tmp_path, monkeypatch):
    write_fmnist(tmp_path/'src', n_train=40, n_test=20)
    mds.make_fmnist_sample(tmp_path/'src', tmp_path/'sample', n_train=2, n_test=1)
    before = {p.name: p.read_bytes() for p in (tmp_path/'sample').iterdir()}
    calls = []
    real = lzma.compress
    def flaky(data, **kw):
        calls.append(1)
        if len(calls) == 3: raise MemoryError('interrupted')
        return real(data, **kw)
    monkeypatch.setattr(lzma, 'compress', flaky)
    with pytest.raises(MemoryError): mds.make_fmnist_sample(tmp_path/'src', tmp_path/'sample', n_train=3, n_test=2)
    assert {p.name: p.read_bytes() for p in (tmp_path/'sample').iterdir()} == before  # no mix of old and new files
