"""Mask policies: when a task's mask is (re)computed and from what. One class per policy; the registry
maps ``EPIConfig.method`` to it. Adding a policy is one file: subclass :class:`MaskPolicy`, decorate it
with :func:`register_policy`, import it in :func:`_load_builtin_policies` and add its name to
``config.METHODS``.

The isolator calls, for the task of every step::

    policy.tracks_importance(state)          # update the task's importance EMA on this step?
    policy.after_importance(isolator, state) # e.g. static: freeze the mask once the probe is over

and at every refresh, for every task::

    policy.refresh(isolator, state)          # -> per-tensor drift stats if the mask was re-ranked, else None
"""

from __future__ import annotations

POLICIES: dict[str, type["MaskPolicy"]] = {}


def register_policy(cls: type["MaskPolicy"]) -> type["MaskPolicy"]:
    POLICIES[cls.name] = cls
    return cls


class MaskPolicy:
    name = "full"

    def tracks_importance(self, state) -> bool:
        return False

    def after_importance(self, isolator, state) -> None:
        return None

    def refresh(self, isolator, state) -> dict | None:
        return None


register_policy(MaskPolicy)


def _load_builtin_policies() -> None:
    from . import policy_epi, policy_random, policy_static  # noqa: F401


def get_policy(name: str) -> MaskPolicy:
    _load_builtin_policies()
    try:
        return POLICIES[name]()
    except KeyError:
        raise ValueError(f"unknown isolation method {name!r}: expected one of {', '.join(POLICIES)}") from None
