"""Pair geometry for relation extraction, and the geometric rule linker.

All functions work on batched entity boxes ``[B, E, 4]`` in 0-1000 page coordinates; pair tensors are
``[B, E_head, E_tail]``. The rule ("link each value to the key on its line to the left, else the
nearest key above") is both a baseline / fallback linker and a source of indicator features for the
learned scorer, so the model can start from it and learn its exceptions.
"""

from __future__ import annotations

import torch

SAME_LINE_OVERLAP = 0.5  # vertical overlap / smaller height to count as one line
LEFT_TOLERANCE = 15.0  # a key may overlap the value's left edge by this much (0-1000 units)
NUM_GEOMETRIC_FEATURES = 17
_FAR = 1e6


def pair_geometry(boxes: torch.Tensor) -> dict[str, torch.Tensor]:
    boxes = boxes.float()
    hx0, hy0, hx1, hy1 = (b[:, :, None] for b in boxes.unbind(-1))  # heads along dim 1
    tx0, ty0, tx1, ty1 = (b[:, None, :] for b in boxes.unbind(-1))  # tails along dim 2
    head_height, tail_height = (hy1 - hy0).clamp(min=1), (ty1 - ty0).clamp(min=1)
    head_width, tail_width = (hx1 - hx0).clamp(min=1), (tx1 - tx0).clamp(min=1)
    vertical_overlap = (torch.minimum(hy1, ty1) - torch.maximum(hy0, ty0)).clamp(min=0)
    horizontal_overlap = (torch.minimum(hx1, tx1) - torch.maximum(hx0, tx0)).clamp(min=0)
    head_cx, head_cy = (hx0 + hx1) / 2, (hy0 + hy1) / 2
    tail_cx, tail_cy = (tx0 + tx1) / 2, (ty0 + ty1) / 2
    gap_x = torch.maximum(hx0 - tx1, tx0 - hx1).clamp(min=0)
    gap_y = torch.maximum(hy0 - ty1, ty0 - hy1).clamp(min=0)
    vertical_ratio = vertical_overlap / torch.minimum(head_height, tail_height)
    same_line = vertical_ratio >= SAME_LINE_OVERLAP
    return {
        "dx": tail_cx - head_cx, "dy": tail_cy - head_cy,
        "edge_dx": tx0 - hx1, "edge_dy": ty0 - hy1,
        "centre_distance": torch.sqrt((tail_cx - head_cx) ** 2 + (tail_cy - head_cy) ** 2),
        "box_distance": torch.sqrt(gap_x**2 + gap_y**2),
        "vertical_ratio": vertical_ratio,
        "horizontal_ratio": horizontal_overlap / torch.minimum(head_width, tail_width),
        "left_alignment": (tx0 - hx0).abs(),
        "same_line": same_line,
        "head_left": (hx1 <= tx0 + LEFT_TOLERANCE) & (head_cx < tail_cx),
        "head_above": (head_cy < tail_cy) & ~same_line,
    }


def _pick_min(cost: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """One-hot [B, E_head, E_tail] of the allowed head with the smallest cost for each tail."""
    masked = torch.where(allowed, cost, torch.full_like(cost, _FAR))
    best = masked.argmin(dim=1, keepdim=True)
    one_hot = torch.zeros_like(allowed).scatter_(1, best, True)
    return one_hot & allowed.any(dim=1, keepdim=True)


def rule_indicators(boxes, head_mask, tail_mask, geometry=None, above_cost: str = "left_edge") -> dict[str, torch.Tensor]:
    """The rule's pieces. ``above_cost``: ``"left_edge"`` ranks keys above by the distance between
    the boxes' left-edge / vertical-centre points (keys sit above the start of their value);
    ``"box"`` by the gap between the boxes."""
    geometry = geometry or pair_geometry(boxes)
    num_entities = boxes.shape[1]
    not_self = ~torch.eye(num_entities, dtype=torch.bool, device=boxes.device)[None]
    candidates = head_mask[:, :, None] & tail_mask[:, None, :] & not_self
    left_on_line = candidates & geometry["same_line"] & geometry["head_left"]
    nearest_left = _pick_min(geometry["edge_dx"].abs(), left_on_line)
    above = candidates & geometry["head_above"]
    if above_cost == "left_edge":
        cost = torch.sqrt(geometry["left_alignment"] ** 2 + geometry["dy"] ** 2)
    elif above_cost == "box":
        cost = geometry["box_distance"]
    else:
        raise ValueError(f"above_cost must be 'left_edge' or 'box', got {above_cost!r}")
    nearest_above = _pick_min(cost, above)
    has_left = left_on_line.any(dim=1, keepdim=True)
    pick = torch.where(has_left, nearest_left, nearest_above)
    return {"candidates": candidates, "nearest_left": nearest_left, "nearest_above": nearest_above, "pick": pick}


def rule_links(boxes: torch.Tensor, head_mask: torch.Tensor, tail_mask: torch.Tensor,
               above_cost: str = "left_edge") -> torch.Tensor:
    """Head index chosen by the rule for every tail ``[B, E]``; -1 for tails with no candidate."""
    pick = rule_indicators(boxes, head_mask, tail_mask, above_cost=above_cost)["pick"]
    chosen = pick.float().argmax(dim=1)
    return torch.where(pick.any(dim=1), chosen, torch.full_like(chosen, -1))


def geometric_pair_features(boxes: torch.Tensor, head_mask: torch.Tensor, tail_mask: torch.Tensor) -> torch.Tensor:
    """``[B, E_head, E_tail, NUM_GEOMETRIC_FEATURES]``, roughly unit-scaled."""
    geometry = pair_geometry(boxes)
    rule = rule_indicators(boxes, head_mask, tail_mask, geometry)
    distance = torch.where(rule["candidates"], geometry["box_distance"], torch.full_like(geometry["box_distance"], _FAR))
    rank = distance.argsort(dim=1).argsort(dim=1).float()
    scale = 1 / 200.0
    features = [
        geometry["dx"] * scale, geometry["dy"] * scale, geometry["edge_dx"] * scale, geometry["edge_dy"] * scale,
        geometry["centre_distance"] * scale, geometry["box_distance"] * scale,
        torch.log1p(geometry["box_distance"]) / 7, geometry["vertical_ratio"].clamp(max=1),
        geometry["horizontal_ratio"].clamp(max=1), geometry["left_alignment"] * scale,
        geometry["same_line"].float(), geometry["head_left"].float(), geometry["head_above"].float(),
        rule["nearest_left"].float(), rule["nearest_above"].float(), rule["pick"].float(), 1 / (1 + rank),
    ]
    return torch.stack(features, dim=-1)
