"""miniai: a deep learning framework built from scratch on PyTorch tensors."""
__version__ = "0.1.0"
