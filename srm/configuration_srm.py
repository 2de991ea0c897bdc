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
SHARED_ENCODER = "shared"  # similarity-branch model setting: reuse the SRM's own encoder (no second copy)
LABEL_TYPES = ("pairwise", "rating")

# Default settings of every known feature branch kind; a dimension only instantiates the branch it names.
# ``register_branch_kind`` (called by ``srm.branches.register_feature_branch``) adds new kinds.
DEFAULT_FEATURE_BRANCHES: dict[str, dict[str, Any]] = {
    "style": {},
    "similarity": {"model": SHARED_ENCODER},
    "likelihood": {"model": "smollm2-135m", "max_length": 256, "max_prompt_length": 128},
    "judge": {"model": "smollm2-135m", "max_length": 384},
}


def feature_branch_kinds() -> tuple[str, ...]:
    """Every feature branch kind known in this process (built-in + registered), in layout order."""
    return tuple(DEFAULT_FEATURE_BRANCHES)


def branch_kinds() -> tuple[str, ...]:
    return (HEAD_BRANCH,) + feature_branch_kinds()


def register_branch_kind(kind: str, default_settings: dict[str, Any] | None = None) -> None:
    """Make ``kind`` a valid dimension branch (and give its default settings)."""
    if not kind or not isinstance(kind, str) or kind == HEAD_BRANCH or ":" in kind or "," in kind:
        raise ValueError(f"invalid branch kind {kind!r}")
    DEFAULT_FEATURE_BRANCHES[kind] = dict(default_settings or {})


# Kept for code that reads the built-in kinds as constants.
FEATURE_BRANCH_KINDS = ("style", "similarity", "likelihood", "judge")
BRANCH_KINDS = (HEAD_BRANCH,) + FEATURE_BRANCH_KINDS


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
        if self.branch not in branch_kinds():
            raise ValueError(f"dimension {self.name!r}: unknown branch {self.branch!r}; choose from {branch_kinds()} "
                             "(a custom kind must be registered with srm.branches.register_feature_branch first)")
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
    DimensionSpec("relevance", "similarity", "pairwise", "is the answer about this prompt (cross-encoder + cosine)"),
    DimensionSpec("fluency", "likelihood", "pairwise", "length-normalized log-likelihood under a small causal LM"),
)


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
        max_sequence_length (`int`, defaults to 512): token budget of the joint ``prompt + response`` encoder pass.
        max_prompt_length (`int`, defaults to 128): token budget of the prompt pass that feeds the gate.
        freeze_backbone (`bool`, defaults to `False`): keep the encoder frozen (heads, gate and scorers train).
        margin_loss (`bool`, defaults to `False`): subtract a per-pair ``margin`` inside the BT loss (as TRL).
        center_rewards_coefficient (`float`, *optional*): weight of TRL's ``mean((r_a + r_b)^2)`` centering term.
        dimension_loss_weight (`float`, defaults to 1.0): weight of each per-dimension loss relative to BT.
        pooling (`str`, defaults to `"mean"`): ``"mean"`` (encoders) or ``"last"`` (decoders: the last token's state).
        truncation_head_fraction (`float`, defaults to 0.5): share of a truncated text's kept tokens taken from its
            start; the rest come from its end (head + tail truncation keeps the end of long answers visible).
        gate_dropout (`float`, defaults to 0.1): during training each dimension is dropped from the gate's softmax
            with this probability (per prompt), so the reward cannot lean on one dimension alone.
        gate_prior_weight (`float`, defaults to 0.05): weight of ``KL(gate || uniform)``: the gate stays near equal
            weights unless the data pays for moving it.
        monotone_scorers (`bool`, defaults to `True`): a feature branch's main raw signal (cosine, log-likelihood,
            P("Yes")) enters its dimension score with a non-negative learned weight, so training can scale it but
            never flip its sign; the other features add an unconstrained correction.
        relevance_cross_head (`bool`, defaults to `True`): a shared-encoder similarity dimension also gets a head on
            the joint ``prompt + response`` encoding (a cross-encoder), trained e.g. on off-prompt negatives.
        backbone_weights (`str`, defaults to `"included"`): ``"offline"`` saves only heads, scorers, gate and
            normalization statistics; loading rebuilds the encoder from ``backbone_name_or_path`` (an offline alias).
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
        max_sequence_length: int = 512,
        max_prompt_length: int = 128,
        freeze_backbone: bool = False,
        margin_loss: bool = False,
        center_rewards_coefficient: float | None = None,
        dimension_loss_weight: float = 1.0,
        pooling: str = "mean",
        truncation_head_fraction: float = 0.5,
        gate_dropout: float = 0.1,
        gate_prior_weight: float = 0.05,
        monotone_scorers: bool = True,
        relevance_cross_head: bool = True,
        backbone_weights: str = "included",
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
        used = {spec.branch for spec in self.dimension_specs if spec.branch != HEAD_BRANCH}
        for kind in used:
            branches.setdefault(kind, dict(DEFAULT_FEATURE_BRANCHES.get(kind, {})))
        # Settings for kinds no dimension uses are dropped (the CLI passes settings for every built-in kind);
        # a used kind must be known in this process (DimensionSpec already checked that).
        self.feature_branches = {k: v for k, v in branches.items() if k in used}
        if pooling not in ("mean", "last"):
            raise ValueError(f"pooling must be 'mean' (encoders) or 'last' (decoders), got {pooling!r}")
        self.pooling = pooling
        if not 0.0 <= truncation_head_fraction <= 1.0:
            raise ValueError("truncation_head_fraction must be in [0, 1]")
        self.truncation_head_fraction = truncation_head_fraction
        if not 0.0 <= gate_dropout < 1.0:
            raise ValueError("gate_dropout must be in [0, 1)")
        self.gate_dropout = gate_dropout
        self.gate_prior_weight = gate_prior_weight
        self.monotone_scorers = bool(monotone_scorers)
        self.relevance_cross_head = bool(relevance_cross_head)
        if backbone_weights not in ("included", "offline"):
            raise ValueError("backbone_weights must be 'included' or 'offline'")
        self.backbone_weights = backbone_weights
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
    def shared_similarity(self) -> bool:
        """True when the similarity branch reuses the SRM's own encoder: its features (prompt-vs-response cosine)
        come from the encoder passes the model makes anyway, so there is no second model and no extra pass."""
        settings = self.feature_branches.get("similarity")
        if settings is None or "similarity" not in {d["branch"] for d in self.dimensions}:
            return False
        return settings.get("model", SHARED_ENCODER) in (SHARED_ENCODER, self.backbone_name_or_path)

    @property
    def used_feature_branches(self) -> list[str]:
        """Kinds of the *external* feature branches the dimension set needs, in a fixed order (the layout of
        ``branch_features``); a shared-encoder similarity branch is computed inside the model, not listed."""
        used = {d["branch"] for d in self.dimensions} - {HEAD_BRANCH}
        if self.shared_similarity:
            used.discard("similarity")
        order = list(feature_branch_kinds()) + sorted(used - set(feature_branch_kinds()))
        return [kind for kind in order if kind in used]

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
