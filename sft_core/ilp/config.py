"""Configuration of the ILP diagnostics: detection, signals and attribution thresholds in one place.

Every threshold the rules use is a field here (documented in docs/ilp.md, "signal -> cause" table), so
a user tunes the diagnosis with ``--config my_rules.json`` (any subset of the fields) instead of code.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

CAUSES = ("knowledge_gap", "knowledge_conflict", "data_inconsistency", "left_forgetting", "under_optimization")
UNEXPLAINED = "unexplained"
CAUSE_TITLES = {
    "knowledge_gap": "missing prerequisite knowledge in the base model",
    "knowledge_conflict": "SFT target conflicts with pre-training knowledge",
    "data_inconsistency": "internal inconsistency in the SFT data",
    "left_forgetting": "left-side forgetting in sequential fine-tuning",
    "under_optimization": "insufficient optimisation of a rare or complex pattern",
    UNEXPLAINED: "no rule fired",
}


@dataclass
class DetectionConfig:
    """How a training sample is judged learned.

    A sample is tried ``1 + num_samples`` times (greedy plus sampled generations); its pass rate is the
    fraction of attempts the checker accepts (averaged over tuned models when several seeds are given).
    It is *unlearned* when the pass rate is below ``pass_threshold``.
    """

    checker: str = "exact"
    num_samples: int = 4
    temperature: float = 0.7
    top_p: float = 0.95
    pass_threshold: float = 0.5
    max_new_tokens: int = 0  # 0: the target's token count + 8 per sample
    seed: int = 0


@dataclass
class AttributionConfig:
    """Thresholds of the signal -> cause rules (see :func:`sft_core.ilp.attribution.cause_scores`)."""

    # data inconsistency: near-duplicate inputs with disagreeing targets
    neighbour_similarity: float = 0.97  # embedding cosine that counts as "the same input"
    # left-side forgetting: learned at a checkpoint, wrong at the end, and no longer trained late
    early_last_seen_fraction: float = 0.8  # last trained before this fraction of the schedule
    # knowledge conflict: the base model links this input to another answer (PMI per token, nats)
    conflict_margin_nats: float = 1.0  # PMI of the best wrong answer minus PMI of the target
    conflict_alternative_pmi: float = 1.5  # ... and the input raises that answer at least this much
    skill_target_pmi: float = 2.0  # target PMI this high: the input builds the target (a skill), not a conflict
    # knowledge gap: the base cannot connect this input to this target
    base_knows_prob: float = 0.3  # base geometric-mean target probability above this = base already knows it
    gap_max_pmi_nats: float = 0.5  # mean per-token log p(target|input) - log p(target|blank input) below this
    # under-optimisation of rare / complex patterns
    rare_density_percentile: float = 0.2  # neighbour density in the lowest 20% of the data set
    rare_cluster_size: int = 8  # or an input cluster this small
    cluster_distance: float = 0.35  # cosine distance cut for the input clusters
    long_target_percentile: float = 0.9  # target length in the top 10%
    still_falling_drop: float = 0.1  # loss fell >= 10% over the last checkpoints
    # confidence / secondary causes
    secondary_min_score: float = 0.5  # other causes scoring at least this are listed as secondary
    min_primary_score: float = 0.35  # below this the sample is "unexplained" (partial evidence scores 0.3)

    @classmethod
    def from_json(cls, path) -> "AttributionConfig":
        """Read any subset of the fields from a JSON object; unknown keys are an error naming the key."""
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a JSON object of AttributionConfig fields")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{path}: unknown AttributionConfig field(s) {', '.join(unknown)}")
        return cls(**data)

    def to_dict(self) -> dict:
        return asdict(self)
