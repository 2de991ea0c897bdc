"""The SRM shipped inside the package: ``srm score`` / ``srm serve`` use it when no ``--model`` is given.

``srm/default_model/`` holds only what sits on top of the offline ``minilm-l6`` encoder: heads, feature scorers,
gate, reward scale and normalization statistics (``model.safetensors``, a few MB), the config and the tokenizer
files. Loading rebuilds the encoder from the offline alias (``SRMConfig.backbone_weights == "offline"``), so it
works without a model hub. It is produced by ``scripts/train_default_srm.py`` from the train part of the shared
preference split (see docs/srm.md, "Default model", for its data and scores).
"""

from __future__ import annotations

from pathlib import Path

DEFAULT_MODEL_DIR = Path(__file__).resolve().parent / "default_model"
REQUIRED_FILES = ("config.json", "model.safetensors")


class DefaultModelMissingError(FileNotFoundError):
    """The package has no (complete) default model; the message says how to make one."""


def default_model_dir() -> Path:
    """``DEFAULT_MODEL_DIR`` after checking it holds a complete model."""
    missing = [name for name in REQUIRED_FILES if not (DEFAULT_MODEL_DIR / name).is_file()]
    if missing:
        raise DefaultModelMissingError(
            f"the default SRM in {DEFAULT_MODEL_DIR} is incomplete (missing {', '.join(missing)}); pass --model, "
            "or rebuild it with `python scripts/train_default_srm.py`")
    return DEFAULT_MODEL_DIR


def load_default_srm(device: str | None = None):
    """The shipped :class:`~srm.modeling_srm.SRMModel` (eval mode) and its tokenizer."""
    from transformers import AutoTokenizer

    from .modeling_srm import SRMModel

    path = default_model_dir()
    model = SRMModel.from_pretrained(str(path)).eval()
    if device:
        model = model.to(device)
    return model, AutoTokenizer.from_pretrained(str(path))


def load_default_scorer(**scorer_kwargs):
    """An :class:`~srm.scoring.SRMScorer` over the shipped model (what ``srm score`` without ``--model`` uses)."""
    from .scoring import SRMScorer

    return SRMScorer.from_pretrained(str(default_model_dir()), **scorer_kwargs)
