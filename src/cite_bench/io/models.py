"""The model store: trained models saved as folders, loaded only as the classes methods declare."""

from __future__ import annotations

import importlib
import inspect
import json
import pickle
from pathlib import Path, PurePosixPath
from typing import Any

import anndata as ad
import numpy as np
from kedro.io.core import AbstractVersionedDataset, DatasetError, Version

from cite_bench.artifacts import is_plain_name
from cite_bench.io.atomic import atomic_path
from cite_bench.io.h5 import _LOCAL

# Model classes a saved model may name in its model_class.json: the classes the methods declare
# (``Method.model_class``, collected in ``cite_bench.methods.MODEL_CLASSES``), by public import
# path. Loading imports the class and runs its ``load``, so a model folder could otherwise make
# the project import and run any code.
# Folders saved before the methods had modules of their own name the old module.
_LEGACY_MODEL_MODULE = "cite_bench.pipelines.modelling.model_artifacts."
_MODEL_MODULE = "cite_bench.methods.model_artifacts."


def _check_model_name(name: object, source: str) -> str:
    """``name`` if it is a plain folder name; saved indexes are input, and joined into paths."""
    # A model's name in models.json becomes a folder name: one plain path component.
    if not is_plain_name(name):
        raise DatasetError(
            f"{source}: model name {name!r} is not a plain folder name (letters, digits, '_', "
            "'-', '.'; no path separators, no '..'); refusing to use it as a path."
        )
    return name


def _package(dotted_name: str) -> str:
    return dotted_name.split(".", maxsplit=1)[0]


def _model_classes() -> list[str]:
    from cite_bench.methods import MODEL_CLASSES

    return sorted(MODEL_CLASSES)


def _allowed_model_class(recorded: object) -> type | None:
    """The class a saved model names, if it is one that a method declares."""
    if not isinstance(recorded, str):
        return None
    if recorded.startswith(_LEGACY_MODEL_MODULE):
        recorded = _MODEL_MODULE + recorded.removeprefix(_LEGACY_MODEL_MODULE)
    for public in _model_classes():
        if _package(recorded) != _package(public):
            continue  # import only the package the name claims
        public_module, _, public_name = public.rpartition(".")
        candidate = getattr(importlib.import_module(public_module), public_name)
        # Folders saved before public names were recorded name the defining module.
        if recorded in (public, f"{candidate.__module__}.{candidate.__qualname__}"):
            return candidate
    return None


def _class_name_to_record(model_class: type) -> str:
    """The public import path recorded for ``model_class``; refuses classes that could not be
    loaded again (a save that cannot be loaded is found out too late)."""
    own = f"{model_class.__module__}.{model_class.__qualname__}"
    for name in (*_model_classes(), own):
        if _package(name) == _package(own) and _allowed_model_class(name) is model_class:
            return name
    raise DatasetError(
        f"ModelDataset stores only the model classes the methods declare, not {own}: name it "
        "as the method's model_class in its module (cite_bench/methods/<method>.py)."
    )


# What scvi-tools' model.pt holds besides what torch itself allows in weights-only files
# (tensors, storages, OrderedDict, ...): plain containers, numpy arrays and the pandas frames of
# its data registry, by the names the pickle uses. All of them only build data.
TORCH_DATA_GLOBALS = frozenset(
    {
        "builtins.bytes",
        "builtins.dict",
        "builtins.frozenset",
        "builtins.list",
        "builtins.set",
        "builtins.slice",
        "builtins.tuple",
        "collections.defaultdict",
        "collections.OrderedDict",
        "numpy._core.multiarray._reconstruct",
        "numpy._core.multiarray.scalar",
        "numpy.core.multiarray._reconstruct",
        "numpy.core.multiarray.scalar",
        "numpy.dtype",
        "numpy.ndarray",
        *(f"numpy.dtypes.{type(np.dtype(code)).__name__}" for code in "?bhilqBHILQefdgFDGOUS"),
        "pandas._libs.internals._unpickle_block",
        "pandas.core.arrays.categorical.Categorical",
        "pandas.core.dtypes.dtypes.CategoricalDtype",
        "pandas.core.frame.DataFrame",
        "pandas.core.indexes.base.Index",
        "pandas.core.indexes.base._new_Index",
        "pandas.core.indexes.category.CategoricalIndex",
        "pandas.core.indexes.range.RangeIndex",
        "pandas.core.internals.managers.BlockManager",
        "pandas.core.series.Series",
    }
)


def _check_torch_files(folder: Path) -> None:
    """Refuse ``*.pt`` files that name anything but tensors and data.

    scvi-tools reads them with ``torch.load(weights_only=False)``, which calls whatever the
    pickle names; torch's weights-only reader cannot read them (it rejects the data registry's
    defaultdict). So every name the pickle refers to is listed first, without running it
    (torch's static scan, which rejects pickle instructions it does not know), and the file is
    loaded only if each is one torch allows in weights-only files or in ``TORCH_DATA_GLOBALS``.
    """
    files = sorted(folder.glob("*.pt"))
    if not files:
        return
    import torch

    for file in files:
        try:
            unexpected = sorted(
                set(torch.serialization.get_unsafe_globals_in_checkpoint(file)) - TORCH_DATA_GLOBALS
            )
        except (pickle.UnpicklingError, ValueError, RuntimeError, EOFError) as exc:
            unexpected = [f"unreadable: {type(exc).__name__}: {exc}"]
        if unexpected:
            raise DatasetError(
                f"'{file}' refers to {', '.join(unexpected)}, not only to tensors and data, "
                "and loading it would run that: refusing to load it. Model folders are trusted "
                "input; retrain the model instead."
            )


class ModelDataset(AbstractVersionedDataset[Any, Any]):
    """A trained model, or several by name (one per seed: ``{"seed_0": model, ...}``), saved as
    a directory by each model's own ``save(dir_path, overwrite=...)`` and loaded by its class's
    ``load(dir_path)`` (the scvi-tools convention, which MultiVAE shares). The class is
    recorded beside each model so that loading needs no configuration. The whole directory is
    replaced at once, so models of seeds no longer asked for do not linger.

    Loading accepts only the model classes the methods declare (``Method.model_class``),
    plain model names, and torch files without executable
    objects; model folders are still trusted input (a class's own ``load`` reads them)."""

    _CLASS_FILE = "model_class.json"
    _INDEX_FILE = "models.json"

    def __init__(
        self,
        *,
        filepath: str,
        save_args: dict[str, Any] | None = None,
        version: Version | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        self._save_args = dict(save_args or {})
        self.metadata = metadata
        super().__init__(
            filepath=PurePosixPath(filepath),
            version=version,
            exists_function=_LOCAL.exists,
            glob_function=_LOCAL.glob,
        )

    def load(self) -> Any:
        path = Path(self._get_load_path())
        index = path / self._INDEX_FILE
        if index.is_file():
            names = json.loads(index.read_text())
            if not isinstance(names, list):
                raise DatasetError(f"'{index}' must hold a list of model names, not {names!r}.")
            checked = [_check_model_name(name, str(index)) for name in names]
            return {name: self._load_one(path / name) for name in checked}
        return self._load_one(path)

    def save(self, data: Any) -> None:
        path = Path(self._get_save_path())
        with atomic_path(path, directory=True) as temporary:
            if isinstance(data, dict):
                for name, model in data.items():
                    self._save_one(model, temporary / _check_model_name(name, "ModelDataset.save"))
                (temporary / self._INDEX_FILE).write_text(json.dumps(list(data)))
            else:
                self._save_one(data, temporary)

    def _load_one(self, path: Path) -> Any:
        class_file = path / self._CLASS_FILE
        if not class_file.is_file():
            raise DatasetError(f"No saved model in '{path}' (missing {self._CLASS_FILE}).")
        try:
            recorded = json.loads(class_file.read_text())["class"]
        except (ValueError, TypeError, KeyError) as exc:
            raise DatasetError(f"'{class_file}' does not name a model class ({exc}).") from exc
        model_class = _allowed_model_class(recorded)
        if model_class is None:
            raise DatasetError(
                f"'{class_file}' names {recorded!r}, which is not one of the model classes the "
                f"methods declare ({', '.join(_model_classes())}): refusing to import it."
            )
        _check_torch_files(path)
        saved_data = path / "adata.h5ad"
        if not saved_data.is_file():
            return model_class.load(str(path))
        adata = ad.read_h5ad(saved_data)
        # h5ad turns lists in uns into arrays; Multigrate's MultiVAE insists on lists.
        for key, value in adata.uns.items():
            if isinstance(value, np.ndarray) and value.ndim == 1 and value.dtype.kind in "iuf":
                adata.uns[key] = value.tolist()
        return model_class.load(str(path), adata=adata)

    def _save_one(self, model: Any, path: Path) -> None:
        save_args = dict(self._save_args)
        if "save_anndata" in inspect.signature(model.save).parameters:
            # Keep the training data with the model so that it loads without arguments.
            save_args.setdefault("save_anndata", True)
        class_name = _class_name_to_record(type(model))
        model.save(str(path), overwrite=True, **save_args)
        (path / self._CLASS_FILE).write_text(json.dumps({"class": class_name}))

    def _describe(self) -> dict[str, Any]:
        return {"filepath": str(self._filepath), "version": self._version}

    def _exists(self) -> bool:
        try:
            path = Path(self._get_load_path())
            return (path / self._CLASS_FILE).is_file() or (path / self._INDEX_FILE).is_file()
        except DatasetError:
            return False
