"""Datasets in memory and the batched loader.

    >>> from cnnlab import data
    >>> ds = data.load_dataset("mnist")
    >>> loader = data.BatchLoader(ds.train_x, ds.train_y, batch_size=128, mean=ds.mean, std=ds.std)

Modules: ``formats`` (IDX, CIFAR pickles, mnist.pkl.gz), ``fetch`` (the verified fetch chain and
cache), ``datasets`` (what each dataset is), ``loader`` (batches by permutation indexing).
"""
from cnnlab.data.datasets import SPECS, Dataset, load_dataset, names, spec
from cnnlab.data.fetch import data_root
from cnnlab.data.loader import BatchLoader, split_validation

__all__ = ["SPECS", "BatchLoader", "Dataset", "data_root", "load_dataset", "names", "spec", "split_validation"]
