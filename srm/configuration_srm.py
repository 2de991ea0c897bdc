"""Configuration of the Structural Reward Model (SRM).

An SRM scores a (prompt, response) pair along several *dimensions* (correctness, safety, style, ...).
Each dimension is produced by a *branch*:

* ``head`` branches share one encoder pass over ``prompt + response``; each adds a small MLP head, so a new
  head dimension costs no extra backbone pass.
* feature branches (``style``, ``similarity``, ``likelihood``; see :mod:`srm.branches`) are separate, frozen
  feature extractors (a deterministic function or a small model). Their feature vectors can be computed in
  parallel or cached per example; the SRM learns one small scorer per dimension on top of them.

A gate network reads the prompt's representation and produces softmax weights over the dimensions; the reward
is ``scale * sum_k gate_k * score_k + bias``. ``scalar_baseline=True`` turns the same classes into a classic
scalar reward model (same backbone, one head, no gate, no feature branches).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from transformers import AutoConfig, PretrainedConfig

HEAD_BRANCH = "head"
FEATURE_BRANCH_KINDS = ("style", "similarity", "likelihood")
BRANCH_KINDS = (HEAD_BRANCH,) + FEATURE_BRANCH_KINDS
LABEL_TYPES = ("pairwise", "rating")


@dataclass(frozen=True)
class DimensionSpec:
    """One reward dimension: its name, the branch that scores it and the kind of labels it trains on.

    ``label_type`` is ``"pairwise"`` (which of two responses is better on this dimension) or ``"rating"``
    (a scalar target per response, regressed with MSE). Both kinds are accepted in training; the label type
    only says which one the data for this dimension normally carries and is reported by ``srm evaluate``.
    """

    name: str
    branch: str = HEAD_BRANCH
    label_type: str = "pairwise"
    description: str = ""

    def __post_init__(self):
        if not self.name or not isinstance(self.name, str):
            raise ValueError(f"dimension name must be a non-empty string, got {self.name!r}")
        if self.branch not in BRANCH_KINDS:
            raise ValueError(f"dimension {self.name!r}: unknown branch {self.branch!r}; choose from {BRANCH_KINDS}")
        if self.label_type not in LABEL_TYPES:
            raise ValueError(f"dimension {self.name!r}: unknown label_type {self.label_type!r}; choose from {LABEL_TYPES}")

    @classmethod
    def from_any(cls, value: "DimensionSpec | dict | str") -> "DimensionSpec":
        """Accepts a spec, a dict, or the CLI shorthand ``name[:branch[:label_type]]``."""
        if isinstance(value, DimensionSpec):
            return value
        if isinstance(value, dict):
            return cls(**value)
        if isinstance(value, str):
            parts = value.split(":")
            if len(parts) > 3:
                raise ValueError(f"bad dimension spec {value!r}; expected name[:branch[:label_type]]")
            return cls(*parts)
        raise TypeError(f"cannot build a DimensionSpec from {type(value).__name__}")


DEFAULT_DIMENSIONS: tuple[DimensionSpec, ...] = (
    DimensionSpec("correctness", HEAD_BRANCH, "pairwise", "factual / functional correctness of the answer"),
    DimensionSpec("instruction_following", HEAD_BRANCH, "pairwise", "does the answer obey the prompt's constraints"),
    DimensionSpec("safety", HEAD_BRANCH, "pairwise", "refuses harmful requests, answers benign ones"),
    DimensionSpec("style", "style", "pairwise", "verbosity and formatting: length, markdown, lists, code, refusals"),
    DimensionSpec("relevance", "similarity", "pairwise", "semantic closeness of the answer to the prompt"),
    DimensionSpec("fluency", "likelihood", "pairwise", "length-normalized log-likelihood under a small causal LM"),
)

# Default settings of the feature branches; a dimension only instantiates the branch it names.
DEFAULT_FEATURE_BRANCHES: dict[str, dict[str, Any]] = {
    "style": {},
    "similarity": {"model": "minilm-l6", "max_length": 128},
    "likelihood": {"model": "smollm2-135m", "max_length": 256, "max_prompt_length": 128},
}


class SRMConfig(PretrainedConfig):
    r"""Configuration for :class:`srm.modeling_srm.SRMModel`.

    Args:
        backbone_config (`dict`, *optional*):
            ``to_dict()`` of the shared encoder's config (any ``AutoModel`` text encoder). Filled by
            ``SRMModel.from_backbone``; stored so ``from_pretrained`` rebuilds the encoder without the hub.
        backbone_name_or_path (`str`, *optional*): where the encoder weights originally came from (provenance).
        dimensions (`list[dict]`, *optional*): the dimension set (see :class:`DimensionSpec`); defaults to
            :data:`DEFAULT_DIMENSIONS`. Ignored when ``scalar_baseline`` is true.
        feature_branches (`dict`, *optional*): settings per feature branch kind, e.g.
            ``{"similarity": {"model": "minilm-l6", "max_length": 128, "feature_size": 385}}``.
            ``feature_size`` is filled in when the branch is built.
        scalar_baseline (`bool`, defaults to `False`): one head on the pooled encoder output, no gate.
        head_hidden_size (`int`, defaults to 128): hidden width of each dimension head / feature scorer.
        gate_hidden_size (`int`, defaults to 128): hidden width of the gate MLP.
        gate_temperature (`float`, defaults to 1.0): softmax temperature of the gate (lower = sharper).
        dropout (`float`, defaults to 0.1): dropout inside heads, scorers and the gate.
        max_sequence_length (`int`, defaults to 256): token budget of the joint ``prompt + response`` encoder pass.
        max_prompt_length (`int`, defaults to 128): token budget of the prompt pass that feeds the gate.
        freeze_backbone (`bool`, defaults to `False`): keep the encoder frozen (heads, gate and scorers train).
        margin_loss (`bool`, defaults to `False`): subtract a per-pair ``margin`` inside the BT loss (as TRL).
        center_rewards_coefficient (`float`, *optional*): weight of TRL's ``mean((r_a + r_b)^2)`` centering term.
        dimension_loss_weight (`float`, defaults to 1.0): weight of each per-dimension loss relative to BT.
    """

    model_type = "srm"

    def __init__(
        self,
        backbone_config: dict | None = None,
        backbone_name_or_path: str | None = None,
        dimensions: list[dict] | None = None,
        feature_branches: dict[str, dict[str, Any]] | None = None,
        scalar_baseline: bool = False,
        head_hidden_size: int = 128,
        gate_hidden_size: int = 128,
        gate_temperature: float = 1.0,
        dropout: float = 0.1,
        max_sequence_length: int = 256,
        max_prompt_length: int = 128,
        freeze_backbone: bool = False,
        margin_loss: bool = False,
        center_rewards_coefficient: float | None = None,
        dimension_loss_weight: float = 1.0,
        **kwargs,
    ):
        if isinstance(backbone_config, PretrainedConfig):
            backbone_config = backbone_config.to_dict()
        self.backbone_config = backbone_config
        self.backbone_name_or_path = backbone_name_or_path
        specs = [DimensionSpec.from_any(d) for d in (dimensions if dimensions is not None else DEFAULT_DIMENSIONS)]
        names = [spec.name for spec in specs]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate dimension names in {names}")
        self.scalar_baseline = bool(scalar_baseline)
        self.dimensions = [] if self.scalar_baseline else [asdict(spec) for spec in specs]
        if not self.scalar_baseline and not self.dimensions:
            raise ValueError("an SRM needs at least one dimension (or scalar_baseline=True)")
        branches = {k: dict(v) for k, v in (feature_branches or {}).items()}
        for spec in self.dimension_specs:
            if spec.branch != HEAD_BRANCH:
                branches.setdefault(spec.branch, dict(DEFAULT_FEATURE_BRANCHES[spec.branch]))
        unknown = set(branches) - set(FEATURE_BRANCH_KINDS)
        if unknown:
            raise ValueError(f"unknown feature branches {sorted(unknown)}; known: {FEATURE_BRANCH_KINDS}")
        self.feature_branches = {k: v for k, v in branches.items() if k in self.used_feature_branches}
        self.head_hidden_size = head_hidden_size
        self.gate_hidden_size = gate_hidden_size
        if gate_temperature <= 0:
            raise ValueError("gate_temperature must be > 0")
        self.gate_temperature = gate_temperature
        self.dropout = dropout
        self.max_sequence_length = max_sequence_length
        self.max_prompt_length = max_prompt_length
        self.freeze_backbone = freeze_backbone
        self.margin_loss = margin_loss
        self.center_rewards_coefficient = center_rewards_coefficient
        self.dimension_loss_weight = dimension_loss_weight
        super().__init__(**kwargs)

    # ----- derived views -------------------------------------------------------------------------------------
    @property
    def dimension_specs(self) -> list[DimensionSpec]:
        return [DimensionSpec(**d) for d in self.dimensions]

    @property
    def dimension_names(self) -> list[str]:
        return [d["name"] for d in self.dimensions]

    @property
    def used_feature_branches(self) -> list[str]:
        """Feature branch kinds needed by the dimension set, in a fixed order (the feature-vector layout)."""
        used = {d["branch"] for d in self.dimensions}
        return [kind for kind in FEATURE_BRANCH_KINDS if kind in used]

    def feature_size(self, kind: str) -> int:
        size = self.feature_branches.get(kind, {}).get("feature_size")
        if size is None:
            raise ValueError(f"feature branch {kind!r} has no feature_size yet; build it with srm.branches.build_feature_branches")
        return int(size)

    def feature_slices(self) -> dict[str, slice]:
        """Where each feature branch's vector sits inside the concatenated ``branch_features`` tensor."""
        slices, start = {}, 0
        for kind in self.used_feature_branches:
            size = self.feature_size(kind)
            slices[kind] = slice(start, start + size)
            start += size
        return slices

    @property
    def total_feature_size(self) -> int:
        return sum(self.feature_size(kind) for kind in self.used_feature_branches)

    def build_backbone_config(self) -> PretrainedConfig:
        if not self.backbone_config:
            raise ValueError("SRMConfig.backbone_config is empty; create the model with SRMModel.from_backbone(...)")
        values = dict(self.backbone_config)
        return AutoConfig.for_model(values.pop("model_type"), **values)
