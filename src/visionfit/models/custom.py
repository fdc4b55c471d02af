"""Your own `nn.Module`: `--model path/to/model.py:ClassName` or `--model package.module:ClassName`.

The class is imported (a file is executed as a module, like `python model.py` would), built with
the `--model-arg` values, and given `num_classes` when its constructor takes that argument. A
checkpoint records the reference, the file's absolute path and its SHA-256, so loading it needs the
same file — and runs it. `check_model_code` is the gate on that path: it says in one line which
file or module is about to run, and refuses a file whose hash is not the recorded one unless the
user trusts it (`--trust-model-code`), and refuses any code under the "refuse" policy (a service).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import sys
from pathlib import Path
from typing import Any

from torch import nn

from visionfit.console import notice
from visionfit.errors import UserError


def is_custom_reference(name: str) -> bool:
    """`file.py:Class` and `package.module:Class` name a user's class; registry names have no colon."""
    return ":" in name


def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _import_file(path: Path) -> Any:
    # One module per file path and contents, reused, so that loading a checkpoint twice does not run
    # the file twice, and a file changed since does run again.
    key = f"{path}\0{file_digest(path)}"
    module_name = "visionfit_user_model_" + hashlib.sha1(key.encode()).hexdigest()[:12]
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise UserError(f"--model {path}: cannot be imported as a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as error:
        del sys.modules[module_name]
        raise UserError(f"--model {path}: importing it failed: {type(error).__name__}: {error}") from None
    return module


def resolve_reference(reference: str) -> tuple[str, str, Path | None]:
    """Split `where:Class` into (where, class name, absolute file path or None for a module)."""
    where, _, class_name = reference.rpartition(":")
    if not where or not class_name.isidentifier():
        raise UserError(
            f"--model {reference!r}: expected path/to/file.py:ClassName or package.module:ClassName"
        )
    if where.endswith(".py"):
        return where, class_name, Path(where).expanduser().resolve()
    return where, class_name, None


def model_file(reference: str, file: str | None = None) -> Path | None:
    """The file that defines `reference`'s class (None for a module reference); `file` is an
    absolute path to try when the reference's own (possibly relative) path is not there (a
    checkpoint read elsewhere)."""
    where, class_name, path = resolve_reference(reference)
    if path is None:
        return None
    if not path.is_file() and file and Path(file).is_file():
        path = Path(file)
    if not path.is_file():
        raise UserError(
            f"model file {where} not found{f' (nor {file})' if file else ''}; the model class "
            f"{class_name} is defined there: put the file back or run from its folder"
        )
    return path


def check_model_code(reference: str, file: str | None, recorded_sha256: str | None, policy: str) -> None:
    """Before a checkpoint's model class is imported, apply the model-code `policy`
    (`choices.MODEL_CODE_POLICIES`): "refuse" any code; "recorded" refuses a model file that is not
    the one training used (its SHA-256 differs, or none was recorded); "trust" runs it. Says in one
    line which code is about to run."""
    where, class_name, _ = resolve_reference(reference)
    if policy == "refuse":
        raise UserError(
            f"the checkpoint names model code ({reference}) that loading it would run; pass "
            "--trust-model-code to run it, or serve an ONNX export of it (`visionfit export`), which "
            "runs no Python code"
        )
    path = model_file(reference, file)
    if path is None:
        notice(f"importing the module {where} for the model class {class_name} the checkpoint names")
        return
    digest = file_digest(path)
    if digest != recorded_sha256 and policy != "trust":
        recorded = f"SHA-256 {recorded_sha256[:12]}…" if recorded_sha256 else "no recorded SHA-256"
        raise UserError(
            f"refusing to run {path}: the checkpoint's model class {class_name} is defined there, but "
            f"the file is not the one training used (SHA-256 {digest[:12]}…, {recorded}); pass "
            '--trust-model-code (Python: model_code="trust") only if you trust its code, or share '
            "the model as an ONNX export (`visionfit export`), which runs no Python code"
        )
    status = "the file training used" if digest == recorded_sha256 else "changed since training; trusted"
    notice(f"running {path} ({status}) to build the model class {class_name} the checkpoint names")


def load_class(reference: str, *, file: str | None = None) -> type[nn.Module]:
    """The `nn.Module` subclass named by `reference` (imported: its file or module runs)."""
    where, class_name, _ = resolve_reference(reference)
    path = model_file(reference, file)
    if path is not None:
        module = _import_file(path)
    else:
        try:
            module = importlib.import_module(where)
        except ImportError as error:
            raise UserError(f"--model {reference}: cannot import {where} ({error})") from None
    model_class = getattr(module, class_name, None)
    if model_class is None:
        names = sorted(
            name
            for name, value in vars(module).items()
            if inspect.isclass(value) and issubclass(value, nn.Module) and value.__module__ == module.__name__
        )
        raise UserError(
            f"{where} has no class {class_name}; its nn.Module classes: {', '.join(names) or 'none'}"
        )
    if not (inspect.isclass(model_class) and issubclass(model_class, nn.Module)):
        raise UserError(f"{where}:{class_name} is not an nn.Module subclass")
    return model_class


def create_custom_model(
    reference: str, num_classes: int, args: dict[str, Any], *, file: str | None = None
) -> nn.Module:
    """Build the user's class with `args`, adding `num_classes` when the constructor takes it."""
    model_class = load_class(reference, file=file)
    parameters = inspect.signature(model_class.__init__).parameters
    takes_any = any(parameter.kind is inspect.Parameter.VAR_KEYWORD for parameter in parameters.values())
    args = dict(args)
    if ("num_classes" in parameters or takes_any) and "num_classes" not in args:
        args["num_classes"] = num_classes
    try:
        return model_class(**args)
    except TypeError as error:
        raise UserError(f"cannot build {reference} with {args or 'no arguments'}: {error}") from None


def class_reference(model: nn.Module) -> str:
    """`package.module:Class` for an instance (what a checkpoint of it records)."""
    model_class = type(model)
    return f"{model_class.__module__}:{model_class.__qualname__}"
