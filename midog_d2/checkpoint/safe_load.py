"""Loading weights without executing code: ``.pth`` with ``weights_only``, Detectron2's
``.pkl`` with an unpickler that admits only containers, numbers, strings and numpy arrays.
Weights from others are untrusted input."""

import pickle
from typing import Any

import torch

from detectron2.utils.file_io import PathManager


class WeightsError(RuntimeError):
    """Weights midog-d2 refuses to load: a file that could run code when unpickled, one
    that is not a readable checkpoint, or (evaluation, inference) one that leaves part of
    the model unloaded. The message names the file."""


# What Detectron2's .pkl weights (model zoo, Caffe2/MSRA, the converter's output) hold:
# containers, numbers, strings and numpy arrays; nothing that calls other code.
_PICKLE_GLOBALS = {
    ("collections", "OrderedDict"),
    ("builtins", "set"),
    ("builtins", "frozenset"),
    ("builtins", "complex"),
    ("__builtin__", "set"),
    ("__builtin__", "frozenset"),
    ("__builtin__", "complex"),
    ("_codecs", "encode"),  # how protocol-2 pickles written by Python 3 store bytes
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "scalar"),
}


class _ForbiddenGlobal(pickle.UnpicklingError):
    pass


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _PICKLE_GLOBALS:
            return super().find_class(module, name)
        raise _ForbiddenGlobal(f"it refers to {module}.{name}")


def load_pickle_weights(path: str) -> Any:
    """The object in the pickle ``path`` (Detectron2's ``.pkl`` weights), read with an
    unpickler that admits only dicts, lists, tuples, sets, numbers, strings, bytes and
    numpy arrays. Anything else (a file crafted to run code) raises :class:`WeightsError`
    before it is constructed."""
    with PathManager.open(path, "rb") as f:
        try:
            return _RestrictedUnpickler(f, encoding="latin1").load()
        except _ForbiddenGlobal as e:
            raise WeightsError(
                f"{path}: refused to load: {e}, which is not plain data (weights may hold "
                "only dicts, lists, numbers, strings and numpy arrays), and unpickling it "
                "could run code"
            ) from None
        except (
            pickle.UnpicklingError,
            EOFError,
            ValueError,
            TypeError,
            AttributeError,
            IndexError,
            KeyError,
            MemoryError,
            OverflowError,
        ) as e:
            raise WeightsError(
                f"{path}: not a readable .pkl weights file ({type(e).__name__}: {e})"
            ) from None


def load_torch_weights(path: str) -> Any:
    """The object in the PyTorch file ``path``, loaded with ``weights_only=True`` (tensors,
    containers, numbers, strings: nothing that calls other code), on the CPU."""
    try:
        with PathManager.open(path, "rb") as f:
            return torch.load(f, map_location=torch.device("cpu"), weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise WeightsError(
            f"{path}: refused to load: it holds objects other than tensors and plain data, "
            f"and unpickling it could run code ({first})"
        ) from None
    except (RuntimeError, EOFError, ValueError, OSError) as e:
        if isinstance(e, FileNotFoundError):
            raise
        raise WeightsError(
            f"{path}: not a readable PyTorch checkpoint ({type(e).__name__}: {e})"
        ) from None
