"""`EPIConfig`: the one configuration object for parameter isolation (EPI, static, random, full)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

METHODS = ("epi", "static", "random", "full")
SALIENCIES = ("fisher", "taylor", "fisher_mb")
SELECTION_SCORES = ("importance", "specificity")
GRANULARITIES = ("element", "row")
OVERLAP_RULES = ("freeze", "share")
ISOLATION_IMPLS = ("snapshot", "full_copy")
IMPORTANCE_DTYPES = ("bfloat16", "float32", "float16")


@dataclass
class EPIConfig:
    """How parameters are isolated between tasks during multi-task fine-tuning.

    Args:
        method: ``"epi"`` (evolving masks, refreshed during training), ``"static"`` (CPI-FT style:
            importance measured over the first ``probe_steps`` steps of each task, then the mask is
            frozen), ``"random"`` (control: at the same moment as ``static``, a mask of the same size per
            tensor as the static one, drawn uniformly at random, then frozen) or ``"full"`` (plain
            fine-tuning, nothing is isolated).
        isolation_ratio: fraction of each tensor's elements (or rows) a task protects.
        update_interval: optimizer steps between two mask refreshes (``epi``; also the cadence of
            drift records for ``static`` / ``random``).
        warmup_steps: no mask exists before this global optimizer step. Refreshes happen at every step
            ``s >= 1`` with ``s >= warmup_steps`` and ``(s - warmup_steps) % update_interval == 0``.
        release_patience: an element leaves a task's mask only after it has been outside the task's
            top ``isolation_ratio`` for this many consecutive refreshes (hysteresis; 1 = no hysteresis).
        saliency: importance estimator (see ``sft_core.epi.importance``): ``"fisher"`` (g^2) or
            ``"taylor"`` (|g * theta|), computed per element from the (all-reduced) gradient of a step,
            or ``"fisher_mb"``: the sum over the step's micro-batches (gradient accumulation) of each
            micro-batch's squared gradient, seen through tensor hooks (``importance_microbatch.py``;
            equals ``fisher`` without gradient accumulation; 4 B per parameter of working memory).
        selection_score: what is ranked at a refresh: ``"importance"`` (the task's own EMA) or
            ``"specificity"`` (how much more a unit matters to the task than to the average other task,
            see ``selection.py``: units every task relies on rank last, so masks overlap less).
        ema_decay: decay of the per-task importance moving average (``ema = d*ema + (1-d)*s``), applied
            once per importance update.
        importance_interval: a task's importance EMA is updated on its 1st, (1+k)th, (1+2k)th... step
            (k = this value). The EMA pass reads every gradient and rewrites the EMA, so k > 1 divides
            its cost by k; the EMA then averages every k-th step's saliency (``ema_decay`` applies per
            update, so it spans k times more steps). Default 2: half the importance cost per step
            (about 2% of a smollm2-135m step of 256 tokens on one CPU core); measured cost in quality
            (docs/results/epi_importance_interval.md, minilm-l6, 3 tasks): Spearman 0.93 with the
            every-step EMA and 78% of the top-10% mask shared, while the every-step mask itself keeps
            only 69% from one refresh (8 steps) to the next. k=4: 0.81 / 64%.
        granularity: ``"element"`` or ``"row"`` (output channel: dim 0 of each tensor).
        probe_steps: ``static`` / ``random``: a task's mask is measured over its first ``probe_steps``
            steps.
        overlap: what a step on task t does with a unit that another task protects but that is also in
            t's own mask: ``"freeze"`` (default) keeps it frozen (anything protected by another task never
            moves); ``"share"`` keeps it trainable for t (measured to erode the other task's protection:
            docs/epi.md).
        replay_batches: ``epi``: per task, this many training batches (reservoir-sampled over the task's
            steps, captured from the model's forward inputs) are kept in the EPI state. At a refresh, a
            task that took no step since the previous refresh re-estimates its importance on them with
            the current weights (one forward/backward each, gradients taken with ``torch.autograd.grad``,
            so the step's own gradients are untouched), and its mask is re-ranked: absent tasks keep
            evolving instead of freezing into a static mask. 0 disables (absent masks stay as they are).
        replay_seed: seed of the reservoir sampling (and of the ``random`` control's masks).
        isolation_impl: ``"snapshot"`` (default) saves only the protected values before the optimizer
            step and writes them back after it; ``"full_copy"`` copies every tensor that has protected
            elements and selects old/new values with ``torch.where``. Both are bit-exact.
        importance_dtype: storage dtype of the importance EMAs. Each step's saliency is divided by its
            per-tensor mean before entering the EMA (values O(1)); updates are computed in fp32 and
            stored saturated to the dtype's range, with a floor at its smallest normal number so that a
            unit that ever had a gradient never rounds to exactly 0. ``bfloat16`` (default, fp32's range)
            costs 2 bytes per unit and task; ``float16`` can saturate at 65504 times the mean.
        zero_protected_grads: also zero the gradient of protected elements before the optimizer step,
            so the step's task does not leak into the optimizer state (momentum) of another task's
            elements. Parameter values stay bit-identical either way.
        sync_masks_across_ranks: under torch.distributed, broadcast masks from rank 0 after each
            refresh. Masks are already deterministic given identical all-reduced gradients; this makes
            identity hold even if rounding ever differed between ranks (and covers replayed importance,
            which each rank computes on its own buffer).
    """

    method: str = "epi"
    isolation_ratio: float = 0.1
    update_interval: int = 50
    warmup_steps: int = 50
    release_patience: int = 2
    saliency: str = "fisher"
    selection_score: str = "importance"
    ema_decay: float = 0.9
    importance_interval: int = 2
    granularity: str = "element"
    probe_steps: int = 50
    overlap: str = "freeze"
    replay_batches: int = 2
    replay_seed: int = 0
    isolation_impl: str = "snapshot"
    importance_dtype: str = "bfloat16"
    zero_protected_grads: bool = True
    sync_masks_across_ranks: bool = True

    def __post_init__(self) -> None:
        def check_choice(name: str, choices: tuple[str, ...]) -> None:
            value = getattr(self, name)
            if value not in choices:
                raise ValueError(f"EPIConfig.{name}={value!r}: expected one of {', '.join(choices)}")

        from .importance import estimator_names  # registry: an estimator added in its own file shows up here

        check_choice("method", METHODS)
        check_choice("saliency", estimator_names())
        check_choice("selection_score", SELECTION_SCORES)
        check_choice("granularity", GRANULARITIES)
        check_choice("overlap", OVERLAP_RULES)
        check_choice("isolation_impl", ISOLATION_IMPLS)
        check_choice("importance_dtype", IMPORTANCE_DTYPES)
        if not 0.0 < self.isolation_ratio <= 1.0:
            raise ValueError(f"EPIConfig.isolation_ratio={self.isolation_ratio}: expected 0 < ratio <= 1")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"EPIConfig.ema_decay={self.ema_decay}: expected 0 <= decay < 1")
        for name in ("update_interval", "release_patience", "probe_steps", "importance_interval"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"EPIConfig.{name}={getattr(self, name)}: expected an integer >= 1")
        if int(self.release_patience) > 255:
            raise ValueError(f"EPIConfig.release_patience={self.release_patience}: expected <= 255 (uint8 counters)")
        for name in ("warmup_steps", "replay_batches"):
            if int(getattr(self, name)) < 0:
                raise ValueError(f"EPIConfig.{name}={getattr(self, name)}: expected >= 0")

    @property
    def isolates(self) -> bool:
        return self.method != "full"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "EPIConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"EPIConfig: unknown option(s) {', '.join(unknown)}")
        return cls(**values)
