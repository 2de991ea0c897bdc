"""`EPIConfig`: the one configuration object for parameter isolation (EPI, static, full)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

METHODS = ("epi", "static", "full")
SALIENCIES = ("fisher", "taylor")
GRANULARITIES = ("element", "row")
OVERLAP_RULES = ("share", "freeze")
ISOLATION_IMPLS = ("snapshot", "full_copy")
IMPORTANCE_DTYPES = ("float16", "bfloat16", "float32")


@dataclass
class EPIConfig:
    """How parameters are isolated between tasks during multi-task fine-tuning.

    Args:
        method: ``"epi"`` (evolving masks, refreshed during training), ``"static"`` (CPI-FT style:
            importance measured over the first ``probe_steps`` steps of each task, then the mask is
            frozen) or ``"full"`` (plain fine-tuning, nothing is isolated).
        isolation_ratio: fraction of each tensor's elements (or rows) a task protects.
        update_interval: optimizer steps between two mask refreshes (``epi``; also the cadence of
            drift records for ``static``).
        warmup_steps: no mask exists before this global optimizer step. Refreshes happen at every step
            ``s >= 1`` with ``s >= warmup_steps`` and ``(s - warmup_steps) % update_interval == 0``.
        release_patience: an element leaves a task's mask only after it has been outside the task's
            top ``isolation_ratio`` for this many consecutive refreshes (hysteresis; 1 = no hysteresis).
        saliency: ``"fisher"`` (g^2) or ``"taylor"`` (|g * theta|), computed per element from the
            (all-reduced) gradient of each optimizer step.
        ema_decay: decay of the per-task importance moving average (``ema = d*ema + (1-d)*s``).
        granularity: ``"element"`` or ``"row"`` (output channel: dim 0 of each tensor).
        probe_steps: ``static`` only: a task's mask is measured over its first ``probe_steps`` steps.
        overlap: what a step on task t does with an element that another task protects but that is
            also in t's own mask: ``"share"`` (default) keeps it trainable for t; ``"freeze"`` keeps it
            frozen (anything protected by another task never moves).
        isolation_impl: ``"snapshot"`` (default) saves only the protected values before the optimizer
            step and writes them back after it; ``"full_copy"`` copies every tensor that has protected
            elements and selects old/new values with ``torch.where``. Both are bit-exact; see
            docs/epi.md for the measured overhead that made ``snapshot`` the default.
        importance_dtype: storage dtype of the importance EMAs. Saliencies are normalised by their
            tensor mean before entering the EMA, so values are O(1) and fp16 is safe.
        zero_protected_grads: also zero the gradient of protected elements before the optimizer step,
            so the step's task does not leak into the optimizer state (momentum) of another task's
            elements. Parameter values stay bit-identical either way.
        sync_masks_across_ranks: under torch.distributed, broadcast masks from rank 0 after each
            refresh (cheap: bit-packed). Masks are already deterministic given identical all-reduced
            gradients; this makes identity hold even if rounding ever differed between ranks.
    """

    method: str = "epi"
    isolation_ratio: float = 0.1
    update_interval: int = 50
    warmup_steps: int = 50
    release_patience: int = 2
    saliency: str = "fisher"
    ema_decay: float = 0.9
    granularity: str = "element"
    probe_steps: int = 50
    overlap: str = "share"
    isolation_impl: str = "snapshot"
    importance_dtype: str = "float16"
    zero_protected_grads: bool = True
    sync_masks_across_ranks: bool = True

    def __post_init__(self) -> None:
        def check_choice(name: str, choices: tuple[str, ...]) -> None:
            value = getattr(self, name)
            if value not in choices:
                raise ValueError(f"EPIConfig.{name}={value!r}: expected one of {', '.join(choices)}")

        check_choice("method", METHODS)
        check_choice("saliency", SALIENCIES)
        check_choice("granularity", GRANULARITIES)
        check_choice("overlap", OVERLAP_RULES)
        check_choice("isolation_impl", ISOLATION_IMPLS)
        check_choice("importance_dtype", IMPORTANCE_DTYPES)
        if not 0.0 < self.isolation_ratio <= 1.0:
            raise ValueError(f"EPIConfig.isolation_ratio={self.isolation_ratio}: expected 0 < ratio <= 1")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"EPIConfig.ema_decay={self.ema_decay}: expected 0 <= decay < 1")
        for name in ("update_interval", "release_patience", "probe_steps"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"EPIConfig.{name}={getattr(self, name)}: expected an integer >= 1")
        if int(self.release_patience) > 255:
            raise ValueError(f"EPIConfig.release_patience={self.release_patience}: expected <= 255 (uint8 counters)")
        if int(self.warmup_steps) < 0:
            raise ValueError(f"EPIConfig.warmup_steps={self.warmup_steps}: expected >= 0")

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
