"""The parser that ships with the package, and model directories stored as a difference to a backbone.

    from xformparser.defaults import load_parser
    parser = load_parser()                  # the shipped default (xformparser/default_model/), offline
    parser = load_parser("runs/funsd")      # any model dir written by `xformparser train` or export_backbone_delta

A *delta* model directory holds only what differs from a pretrained backbone that is available offline
(``config.backbone_reference``, e.g. ``minilm-l6``):

- ``config.json``: the :class:`XFormParserConfig` (labels, options, backbone reference);
- ``parser_delta.safetensors`` (fp16): every parser weight outside the encoder (layout embeddings,
  SER / BIO / RE heads) in full; for every encoder weight that changed in fine-tuning, either the full
  difference to the pretrained weight (biases, LayerNorms, position embeddings) or, for the large
  matrices of the transformer layers, a rank-r factorisation of that difference (``A @ B``, from its SVD,
  the same form a LoRA adapter has); weights that did not change (the frozen word embeddings) are absent;
- ``delta_manifest.json``: format, backbone reference and a fingerprint of its weights (a different
  backbone is refused), the rank, how much of each difference the rank keeps, training data and scores.

Loading rebuilds the encoder from the backbone the reference resolves to and adds the differences.
Weights are read from safetensors only.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .configuration_xformparser import XFormParserConfig
from .modeling_xformparser import ENCODER_PREFIX, XFormParserModel, load_backbone_state

DEFAULT_MODEL_DIR = Path(__file__).resolve().parent / "default_model"
DELTA_FORMAT = "xformparser-backbone-delta"
DELTA_FORMAT_VERSION = 1
MANIFEST_NAME = "delta_manifest.json"
DELTA_WEIGHTS_NAME = "parser_delta.safetensors"
FULL_PREFIX, DELTA_PREFIX, LOW_RANK_A, LOW_RANK_B = "full.", "delta.", "low_rank_a.", "low_rank_b."
LOW_RANK_MODULE_MARKERS = (".encoder.layer.",)  # 2-D weights inside the transformer layers


class ModelDirectoryError(ValueError):
    """A model directory that cannot be loaded; the message names the directory and the reason."""


def backbone_fingerprint(state: dict[str, torch.Tensor]) -> str:
    """sha256 over the names, shapes and bytes of a few pretrained tensors: tells a wrong backbone apart
    cheaply (the first and last layer's query weights and the word embeddings' first rows)."""
    digest = hashlib.sha256()
    names = sorted(state)
    picked = [n for n in names if n.endswith("attention.self.query.weight")]
    picked = (picked[:1] + picked[-1:]) or names[:2]
    picked += [n for n in names if n.endswith("word_embeddings.weight")]
    for name in picked:
        tensor = state[name].detach().float().contiguous()
        if tensor.dim() == 2 and tensor.shape[0] > 256:
            tensor = tensor[:256]
        digest.update(f"{name}{tuple(state[name].shape)}".encode())
        digest.update(tensor.numpy().tobytes())
    return digest.hexdigest()[:16]


def _low_rank(difference: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor, float]:
    """A [out, r], B [r, in] with A @ B the best rank-r approximation; and the share of the
    difference's Frobenius norm it leaves out (relative error)."""
    u, s, vh = torch.linalg.svd(difference.double(), full_matrices=False)
    root = s[:rank].sqrt()
    a, b = u[:, :rank] * root, root[:, None] * vh[:rank]
    error = float((difference.double() - a @ b).norm() / difference.double().norm().clamp(min=1e-30))
    return a.float(), b.float(), error


def _delta_tensors(model: XFormParserModel, backbone: dict[str, torch.Tensor], rank: int,
                   dtype: torch.dtype) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    tensors, low_rank_errors = {}, {}
    for name, value in model.state_dict().items():
        value = value.detach().cpu()
        if not name.startswith(ENCODER_PREFIX):
            tensors[FULL_PREFIX + name] = value.to(dtype) if value.is_floating_point() else value
            continue
        key = name[len(ENCODER_PREFIX):]
        if key not in backbone:
            tensors[FULL_PREFIX + name] = value.to(dtype)
            continue
        difference = value.float() - backbone[key].float()
        if not bool(difference.any()):
            continue  # unchanged (frozen) weight: the backbone supplies it
        is_layer_matrix = difference.dim() == 2 and any(marker in name for marker in LOW_RANK_MODULE_MARKERS)
        if rank and is_layer_matrix and rank * sum(difference.shape) < difference.numel():
            a, b, error = _low_rank(difference, rank)
            tensors[LOW_RANK_A + name], tensors[LOW_RANK_B + name] = a.to(dtype), b.to(dtype)
            low_rank_errors[name] = round(error, 4)
        else:
            tensors[DELTA_PREFIX + name] = difference.to(dtype)
    return tensors, low_rank_errors


def export_backbone_delta(model: XFormParserModel, output_dir, *, rank: int = 64, max_bytes: int | None = None,
                          dtype: torch.dtype = torch.float16, metadata: dict | None = None) -> dict:
    """Write ``model`` as a delta model directory (see the module docstring), atomically.

    ``rank`` 0 stores full differences. With ``max_bytes`` the rank is lowered (halving) until the
    weights fit; a ValueError if they never do. Returns the manifest."""
    reference = model.config.backbone_reference
    if not reference:
        raise ValueError("the model's config has no backbone_reference: nothing to store a difference to")
    backbone = load_backbone_state(reference)
    while True:
        tensors, errors = _delta_tensors(model, backbone, rank, dtype)
        size = sum(t.numel() * t.element_size() for t in tensors.values())
        if max_bytes is None or size <= max_bytes:
            break
        if rank <= 1:
            raise ValueError(f"the parser's difference to {reference} needs {size / 1e6:.1f} MB even at rank 1 "
                             f"(limit {max_bytes / 1e6:.1f} MB)")
        rank = max(1, rank // 2) if rank > 8 else rank - 1
    manifest = {
        "format": DELTA_FORMAT, "format_version": DELTA_FORMAT_VERSION, "backbone_reference": reference,
        "backbone_fingerprint": backbone_fingerprint(backbone), "dtype": str(dtype).replace("torch.", ""),
        "low_rank": rank, "weights_bytes": size,
        "low_rank_relative_error": {"mean": round(sum(errors.values()) / len(errors), 4) if errors else 0.0,
                                    "max": max(errors.values(), default=0.0), "per_matrix": errors},
        **(metadata or {}),
    }
    output_dir = Path(output_dir)
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.tmp-", dir=output_dir.parent))
    try:
        model.config.save_pretrained(staging)
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(staging / DELTA_WEIGHTS_NAME),
                  metadata={"format": DELTA_FORMAT, "backbone_reference": reference})
        (staging / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        for path in staging.iterdir():
            os.chmod(path, 0o644)
        os.chmod(staging, 0o755)
        _replace_directory(staging, output_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return manifest


def _replace_directory(new: Path, target: Path) -> None:
    """Swap ``new`` in for ``target`` with renames only (a reader sees the old or the new folder)."""
    if not target.exists():
        os.replace(new, target)
        return
    old = target.with_name(f".{target.name}.old-{os.getpid()}")
    os.replace(target, old)
    os.replace(new, target)
    shutil.rmtree(old, ignore_errors=True)


def load_delta_model(model_dir) -> XFormParserModel:
    """Rebuild a parser from a delta model directory on top of its (offline) backbone."""
    model_dir = Path(model_dir)
    manifest_path = model_dir / MANIFEST_NAME
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise ModelDirectoryError(f"{manifest_path}: unreadable delta manifest ({error})") from error
    if manifest.get("format") != DELTA_FORMAT or manifest.get("format_version") != DELTA_FORMAT_VERSION:
        raise ModelDirectoryError(f"{manifest_path}: not a {DELTA_FORMAT} v{DELTA_FORMAT_VERSION} manifest")
    weights_path = model_dir / DELTA_WEIGHTS_NAME
    if not weights_path.is_file():
        raise ModelDirectoryError(f"{model_dir}: {DELTA_WEIGHTS_NAME} is missing")
    try:
        config = XFormParserConfig.from_pretrained(str(model_dir))
        tensors = load_file(str(weights_path))
    except Exception as error:  # corrupt or truncated files: one line naming the folder
        raise ModelDirectoryError(f"{model_dir}: cannot read the model files ({type(error).__name__}: {error})") from error
    reference = manifest["backbone_reference"]
    backbone = load_backbone_state(reference)
    if backbone_fingerprint(backbone) != manifest["backbone_fingerprint"]:
        raise ModelDirectoryError(f"{model_dir}: backbone {reference!r} resolves to different weights than the "
                                  "ones this model was trained on (fingerprint mismatch)")
    model = XFormParserModel(config)
    state = model.state_dict()
    loaded = {}
    for name, value in state.items():
        if FULL_PREFIX + name in tensors:
            loaded[name] = tensors[FULL_PREFIX + name].to(value.dtype)
            continue
        if not name.startswith(ENCODER_PREFIX) or name[len(ENCODER_PREFIX):] not in backbone:
            raise ModelDirectoryError(f"{model_dir}: weight {name} is neither stored nor in backbone {reference!r}")
        base = backbone[name[len(ENCODER_PREFIX):]].float()
        if DELTA_PREFIX + name in tensors:
            base = base + tensors[DELTA_PREFIX + name].float()
        elif LOW_RANK_A + name in tensors:
            base = base + tensors[LOW_RANK_A + name].float() @ tensors[LOW_RANK_B + name].float()
        loaded[name] = base.to(value.dtype)
    unused = set(tensors) - {prefix + name for name in state for prefix in (FULL_PREFIX, DELTA_PREFIX, LOW_RANK_A, LOW_RANK_B)}
    if unused:
        raise ModelDirectoryError(f"{model_dir}: {DELTA_WEIGHTS_NAME} holds weights this config has no place "
                                  f"for: {sorted(unused)[:3]}")
    model.load_state_dict(loaded, strict=True)
    return model.eval()


def load_model_and_tokenizer(model_dir=None):
    """(model, tokenizer) from a delta model dir (the shipped default when ``model_dir`` is None) or from
    a full model dir written by ``xformparser train``. One-line errors for a wrong or missing folder."""
    from transformers import AutoTokenizer

    from sft_core.hub import resolve_model

    from .evaluation import load_parser_files

    directory = Path(model_dir) if model_dir is not None else DEFAULT_MODEL_DIR
    if not directory.exists():
        hint = " (the shipped default model is missing: reinstall, or rebuild it with scripts/train_default_parser.py)" \
            if model_dir is None else ""
        raise FileNotFoundError(2, f"model directory not found{hint}", str(directory))
    if not directory.is_dir():
        raise ModelDirectoryError(f"{directory}: not a directory (--model takes a model directory)")
    if (directory / MANIFEST_NAME).exists():
        model = load_delta_model(directory)
        tokenizer = AutoTokenizer.from_pretrained(resolve_model(model.config.backbone_reference))
        return model, tokenizer
    if (directory / "config.json").exists() and (directory / "model.safetensors").exists():
        try:
            return load_parser_files(directory)
        except (OSError, ValueError, RuntimeError) as error:
            raise ModelDirectoryError(f"{directory}: cannot load the model ({' '.join(str(error).split())[:300]})") from error
    raise ModelDirectoryError(f"{directory}: not an xformparser model directory (expected config.json with "
                              f"model.safetensors, or {MANIFEST_NAME} with {DELTA_WEIGHTS_NAME})")


def load_parser(model_dir=None, **parser_options):
    """A :class:`~xformparser.evaluation.FormParser` (model + tokenizer + batching) from ``model_dir``;
    ``None`` loads the shipped default model offline. ``parser_options`` go to FormParser (batch_size, linker)."""
    from .evaluation import FormParser

    model, tokenizer = load_model_and_tokenizer(model_dir)
    return FormParser(model, tokenizer, **parser_options)


def default_model_card() -> dict:
    """The shipped model's manifest (training data, scores, sizes)."""
    return json.loads((DEFAULT_MODEL_DIR / MANIFEST_NAME).read_text(encoding="utf-8"))


__all__ = ["DEFAULT_MODEL_DIR", "ModelDirectoryError", "default_model_card", "export_backbone_delta",
           "load_delta_model", "load_model_and_tokenizer", "load_parser"]
