"""`visionfit import`: a tutorial's `torch.save` file → a visionfit checkpoint, without running
any code from the file.

Tutorial users hold two kinds of file: `torch.save(model.state_dict(), ...)`, which
`torch.load(weights_only=True)` reads safely, and `torch.save(model, ...)`, a pickled module
whose class lives in *their* `model.py`. For the second kind we unpickle the archive's `data.pkl`
with an unpickler that knows only tensor-rebuilding functions and plain containers: every other
class named in the file becomes an inert placeholder that may be created empty and filled with
attributes (which is how modules are pickled) but refuses to be *called*, which is the only way a
pickle runs code. The tensors are then matched to the registered architecture by order and shape.
"""

from __future__ import annotations

import collections
import hashlib
import io
import pickle
import zipfile
from pathlib import Path
from typing import Any, ClassVar

import torch

from visionfit.data.folder import class_folders, find_split_folders
from visionfit.data.transforms import Preprocess
from visionfit.engine.checkpoint_file import SUFFIX, checkpoint_metadata, save_checkpoint
from visionfit.errors import UserError
from visionfit.models import create_model, get_model_spec, record_of

# The tutorial's test-time transform: Resize((32, 32)) then ToTensor, no Normalize.
TUTORIAL_MEAN = (0.0, 0.0, 0.0)
TUTORIAL_STD = (1.0, 1.0, 1.0)


class RefusedPickle(Exception):
    """The pickle asked to call something that is not a tensor-rebuilding function."""


class _Placeholder:
    """Stands in for a class named in the pickle (the user's model class, torch.nn layers).

    Unpickling a module creates it with `cls.__new__` and fills its `__dict__`; both are harmless.
    Calling the class, which is how a malicious pickle runs `os.system` and friends, is refused.
    """

    origin = "?"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise RefusedPickle(f"the file asks to call {self.origin}")


class _StorageType:
    def __init__(self, dtype: torch.dtype) -> None:
        self.dtype = dtype


_STORAGE_TYPES = {
    f"{name}Storage": dtype
    for name, dtype in {
        "Float": torch.float32,
        "Double": torch.float64,
        "Half": torch.float16,
        "BFloat16": torch.bfloat16,
        "Long": torch.int64,
        "Int": torch.int32,
        "Short": torch.int16,
        "Char": torch.int8,
        "Byte": torch.uint8,
        "Bool": torch.bool,
    }.items()
}


def _rebuild_tensor(
    storage: torch.Tensor, offset: int, size: Any, stride: Any, *_ignored: Any
) -> torch.Tensor:
    try:
        return storage.as_strided(tuple(size), tuple(stride), offset).clone()
    except RuntimeError as error:
        raise RefusedPickle(f"a tensor does not fit its storage ({error})") from None


def _rebuild_parameter(data: torch.Tensor, *_ignored: Any) -> torch.Tensor:
    return data


def _reconstructor(cls: Any, base: Any, state: Any) -> Any:
    """copyreg._reconstructor (protocol 0/1 pickles of plain objects), for placeholders only."""
    if not (isinstance(cls, type) and issubclass(cls, _Placeholder)) or base is not object:
        raise RefusedPickle(f"the file asks to construct {getattr(cls, 'origin', cls)!r}")
    return object.__new__(cls)


class _ModelUnpickler(pickle.Unpickler):
    """Rebuilds tensors, containers and placeholders; never imports or calls anything else."""

    _FUNCTIONS: ClassVar[dict[tuple[str, str], Any]] = {
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("builtins", "set"): set,
        ("__builtin__", "set"): set,  # protocol-2 pickles keep the Python 2 name
        ("builtins", "frozenset"): frozenset,
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
        ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
        ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
        ("copyreg", "_reconstructor"): _reconstructor,
        ("torch", "Size"): tuple,
    }

    def __init__(self, data: bytes, archive: zipfile.ZipFile, prefix: str) -> None:
        super().__init__(io.BytesIO(data))
        self.archive, self.prefix = archive, prefix
        self.placeholders: dict[tuple[str, str], type] = {}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._FUNCTIONS:
            return self._FUNCTIONS[(module, name)]
        if module == "torch" and name in _STORAGE_TYPES:
            return _StorageType(_STORAGE_TYPES[name])
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        key = (module, name)
        if key not in self.placeholders:
            self.placeholders[key] = type(name, (_Placeholder,), {"origin": f"{module}.{name}"})
        return self.placeholders[key]

    def persistent_load(self, pid: Any) -> torch.Tensor:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise RefusedPickle(f"unknown persistent record {pid!r:.60}")
        _, storage_type, key, _location, _numel = pid
        if not isinstance(storage_type, _StorageType):
            raise RefusedPickle(f"unknown storage type {storage_type!r:.60}")
        try:
            raw = self.archive.read(f"{self.prefix}data/{key}")
        except KeyError:
            raise RefusedPickle(f"storage {key} is missing from the archive") from None
        return torch.frombuffer(bytearray(raw), dtype=storage_type.dtype) if raw else torch.empty(0)


def _read_pickled_module(path: Path) -> Any:
    """Unpickle a torch.save zip archive with `_ModelUnpickler`."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = [name for name in archive.namelist() if name.endswith("/data.pkl") or name == "data.pkl"]
            if len(names) != 1:
                raise UserError(f"{path} is a zip file but not a torch.save archive (no single data.pkl)")
            prefix = names[0][: -len("data.pkl")]
            order = archive.read(f"{prefix}byteorder") if f"{prefix}byteorder" in archive.namelist() else b""
            if order.strip() not in (b"", b"little"):
                raise UserError(f"{path} was saved on a big-endian machine; re-save it on this one")
            return _ModelUnpickler(archive.read(names[0]), archive, prefix).load()
    except RefusedPickle as error:
        raise UserError(f"refused {path}: {error}, which could run code; nothing was run") from None
    except (zipfile.BadZipFile, pickle.UnpicklingError, EOFError, ValueError, TypeError) as error:
        raise UserError(f"{path} is not a readable torch.save file ({error})") from None


def _is_tensor_dict(value: Any) -> bool:
    return (
        isinstance(value, dict) and bool(value) and all(isinstance(v, torch.Tensor) for v in value.values())
    )


def _module_state(module: Any, prefix: str = "") -> dict[str, torch.Tensor]:
    """nn.Module.state_dict's order (parameters, persistent buffers, then children) from the
    attributes of an unpickled placeholder."""
    state: dict[str, torch.Tensor] = {}
    attributes = vars(module)
    skipped = attributes.get("_non_persistent_buffers_set") or set()
    for group in ("_parameters", "_buffers"):
        for name, tensor in (attributes.get(group) or {}).items():
            if isinstance(tensor, torch.Tensor) and name not in skipped:
                state[prefix + name] = tensor
    for name, child in (attributes.get("_modules") or {}).items():
        if isinstance(child, _Placeholder):
            state.update(_module_state(child, f"{prefix}{name}."))
    return state


def _find_weights(loaded: Any, path: Path) -> tuple[dict[str, torch.Tensor], str]:
    """The state dict inside what a torch.save file held, and what kind of file it was."""
    if isinstance(loaded, _Placeholder) and "_modules" in vars(loaded):
        return _module_state(loaded), f"whole pickled module {type(loaded).origin}"
    if _is_tensor_dict(loaded):
        return dict(loaded), "state dict"
    if isinstance(loaded, dict):
        for key in ("state_dict", "model_state_dict", "model", "net"):
            if key in loaded:
                weights, kind = _find_weights(loaded[key], path)
                return weights, f"{kind} under {key!r}"
    found = type(loaded).origin if isinstance(loaded, _Placeholder) else type(loaded).__name__
    raise UserError(f"{path} holds neither a model nor a state dict (found {found}); nothing to import")


def read_old_weights(path: str | Path) -> tuple[dict[str, torch.Tensor], str]:
    """The tensors of a tutorial `.pth` file, in state-dict order, and what kind of file it was."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"{path} does not exist")
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, AttributeError) as error:
        # weights_only refuses the classes of a whole pickled module: read those tensors ourselves
        if not zipfile.is_zipfile(path):
            reason = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise UserError(f"{path} is not a readable torch.save file ({reason})") from None
        loaded = _read_pickled_module(path)
    except Exception as error:  # torch.load on arbitrary bytes raises almost anything
        raise UserError(f"{path} is not a readable torch.save file ({type(error).__name__})") from None
    return _find_weights(loaded, path)


def map_weights(
    source: dict[str, torch.Tensor], target: dict[str, torch.Tensor], model_name: str, path: Path
) -> dict[str, torch.Tensor]:
    """Source tensors onto the target's names in state-dict order (the tutorial's `model1.0.weight`
    becomes `0.weight`), with every shape checked."""
    if len(source) != len(target):
        raise UserError(
            f"{path} holds {len(source)} tensors but model {model_name} has {len(target)}; "
            "pick the --model (and --model-arg) it was trained as"
        )
    pairs = list(zip(target, source.values(), strict=True))
    for (name, tensor), source_name in zip(pairs, source, strict=True):
        if tuple(tensor.shape) != tuple(target[name].shape):
            raise UserError(
                f"{path}: tensor {source_name} {list(tensor.shape)} does not fit {model_name}'s {name} "
                f"{list(target[name].shape)}; check --model, --model-arg and the number of --classes"
            )
    return {name: tensor.to(target[name].dtype).contiguous() for name, tensor in pairs}


def read_class_names(classes: str | None, classes_from: str | None) -> list[str]:
    """--classes a,b,c or --classes-from DATA_DIR (its class folders, or those of DATA_DIR/train)."""
    if bool(classes) == bool(classes_from):
        raise UserError("give the class names with --classes a,b,c or --classes-from DATA_DIR (one of them)")
    if classes:
        names = [name.strip() for name in classes.split(",")]
        if any(not name for name in names) or len(set(names)) != len(names):
            raise UserError(f"--classes {classes}: names must be non-empty and distinct")
        return names
    root = Path(str(classes_from)).expanduser()
    if not root.is_dir():
        raise UserError(f"--classes-from {root} is not a folder")
    splits = find_split_folders(root)
    names = class_folders(splits[0] if splits else root)
    if not names:
        raise UserError(f"--classes-from {root} has no class folders")
    return names


def tutorial_preprocess(
    model: str,
    input_size: int | None = None,
    mean: tuple[float, float, float] = TUTORIAL_MEAN,
    std: tuple[float, float, float] = TUTORIAL_STD,
) -> Preprocess:
    """The tutorial's preprocessing (squash-resize to the model's input size, ToTensor, no
    normalisation) unless `input_size`, `mean` or `std` say otherwise."""
    return Preprocess(
        input_size=input_size or get_model_spec(model).input_size,
        mean=tuple(mean),  # type: ignore[arg-type]
        std=tuple(std),  # type: ignore[arg-type]
        resize_mode="squash",
    )


def import_checkpoint(
    old_path: str | Path,
    *,
    model: str,
    classes: list[str],
    output: str | Path | None = None,
    model_args: dict[str, Any] | None = None,
    preprocess: Preprocess | None = None,
) -> tuple[Path, str]:
    """Write a visionfit checkpoint for a tutorial `.pth` file; returns its path and the file kind.

    The preprocessing recorded is `preprocess`, by default the tutorial's (`tutorial_preprocess`).
    """
    old_path = Path(old_path).expanduser()
    weights, kind = read_old_weights(old_path)
    model_args = dict(model_args or {})
    network = create_model(model, len(classes), **model_args)
    state = map_weights(weights, network.state_dict(), model, old_path)
    network.load_state_dict(state, strict=True)
    preprocess = preprocess or tutorial_preprocess(model)
    output = Path(output).expanduser() if output else old_path.with_suffix(SUFFIX)
    if output.resolve() == old_path.resolve():
        raise UserError(f"--out {output} would overwrite the file being imported")
    metadata = checkpoint_metadata(
        record_of(network),
        classes,
        preprocess,
        imported_from={
            "file": old_path.name,
            "kind": kind,
            "sha256": hashlib.sha256(old_path.read_bytes()).hexdigest(),
        },
    )
    output.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(output, network.state_dict(), metadata)
    return output, kind
