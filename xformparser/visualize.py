"""Overlay of a parse result on its page: entity boxes coloured by label, arrows key -> value, a legend
in a panel to the right of the page (page pixels keep their coordinates: x < width is the page).

    from xformparser.visualize import render_overlay
    render_overlay(page_image, result).save("page.png")
"""

from __future__ import annotations

import io
import math
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from sft_core.atomic_io import atomic_write_bytes

LABEL_COLOURS = {
    "question": (31, 119, 180), "key": (31, 119, 180),
    "answer": (44, 160, 44), "value": (44, 160, 44),
    "header": (148, 103, 189),
    "other": (127, 127, 127),
}
FALLBACK_COLOURS = [(214, 39, 40), (140, 86, 75), (227, 119, 194), (188, 189, 34), (23, 190, 207)]
LINK_COLOUR = (255, 127, 14)
FONT_CANDIDATES = ("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf", "DejaVuSans.ttf",
                   "/usr/share/fonts/truetype/liberation2/LiberationSans-Regular.ttf")


def _font(size: int):
    for candidate in FONT_CANDIDATES:
        try:
            return ImageFont.truetype(candidate, size)
        except OSError:
            continue
    return ImageFont.load_default()


def label_colour(label: str, extra: dict) -> tuple[int, int, int]:
    key = label.lower()
    if key in LABEL_COLOURS:
        return LABEL_COLOURS[key]
    if key not in extra:
        extra[key] = FALLBACK_COLOURS[len(extra) % len(FALLBACK_COLOURS)]
    return extra[key]


def _arrow(draw: ImageDraw.ImageDraw, start, end, colour, width: int) -> None:
    draw.line([start, end], fill=colour, width=width)
    angle = math.atan2(end[1] - start[1], end[0] - start[0])
    size = 4 * width + 4
    left = (end[0] - size * math.cos(angle - 0.45), end[1] - size * math.sin(angle - 0.45))
    right = (end[0] - size * math.cos(angle + 0.45), end[1] - size * math.sin(angle + 0.45))
    draw.polygon([end, left, right], fill=colour)


def _anchor_points(key_box, value_box):
    """Arrow from the key's edge facing the value to the value's edge facing the key."""
    kx0, ky0, kx1, ky1 = key_box
    vx0, vy0, vx1, vy1 = value_box
    if vx0 >= kx1 - 5:  # value to the right of the key
        return (kx1, (ky0 + ky1) / 2), (vx0, (vy0 + vy1) / 2)
    if vy0 >= ky1 - 5:  # value below
        return ((kx0 + min(kx1, kx0 + 40)) / 2, ky1), (vx0 + min(20, (vx1 - vx0) / 2), vy0)
    return ((kx0 + kx1) / 2, (ky0 + ky1) / 2), ((vx0 + vx1) / 2, (vy0 + vy1) / 2)


def render_overlay(image, result: dict) -> Image.Image:
    """The page with the result drawn on it (a white page when ``image`` is None)."""
    width, height = int(result["width"]), int(result["height"])
    base = (image.convert("RGB") if image is not None else Image.new("RGB", (width, height), "white"))
    if base.size != (width, height):
        base = base.resize((width, height))
    # Fade the scan a little so the boxes and arrows stand out.
    base = Image.blend(base, Image.new("RGB", base.size, "white"), 0.35).convert("RGBA")
    overlay = Image.new("RGBA", base.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(overlay)
    scale = max(width, height) / 1000
    line_width = max(2, round(2 * scale))
    extra: dict = {}
    labels_seen = []
    for entity in result["entities"]:
        colour = label_colour(entity["label"], extra)
        if entity["label"] not in labels_seen:
            labels_seen.append(entity["label"])
        x0, y0, x1, y1 = entity["box"]
        draw.rectangle([x0 - 2, y0 - 2, x1 + 2, y1 + 2], fill=colour + (40,), outline=colour + (255,), width=line_width)
    boxes = {entity["id"]: entity["box"] for entity in result["entities"]}
    for pair in result["pairs"]:
        start, end = _anchor_points(boxes[pair["key"]["id"]], boxes[pair["value"]["id"]])
        _arrow(draw, start, end, LINK_COLOUR + (230,), line_width)

    page = Image.alpha_composite(base, overlay)

    # Legend in a panel to the right of the page (never on top of the form): one swatch per label
    # present, then the link arrow.
    font = _font(max(12, round(14 * scale)))
    entries = [(label, label_colour(label, extra)) for label in labels_seen]
    row = max(16, round(20 * scale))
    probe = ImageDraw.Draw(page)
    text_width = max([probe.textlength(label, font=font) for label, _ in entries] + [probe.textlength("key -> value", font=font)])
    box_width = int(text_width + 3.2 * row)
    box_height = int(row * (len(entries) + 1) + row * 0.6)
    canvas = Image.new("RGBA", (width + box_width + 20, max(height, box_height + 20)), (255, 255, 255, 255))
    canvas.paste(page, (0, 0))
    draw = ImageDraw.Draw(canvas)
    left, top = width + 10, 10
    draw.line([(width, 0), (width, height)], fill=(160, 160, 160, 255), width=1)
    draw.rectangle([left, top, left + box_width, top + box_height], fill=(255, 255, 255, 255), outline=(0, 0, 0, 255))
    y = top + row * 0.3
    for label, colour in entries:
        draw.rectangle([left + 8, y + 3, left + 8 + row, y + row - 3], fill=colour + (120,), outline=colour + (255,), width=2)
        draw.text((left + 16 + row, y), label, fill=(0, 0, 0, 255), font=font)
        y += row
    _arrow(draw, (left + 8, y + row / 2), (left + 8 + row * 1.4, y + row / 2), LINK_COLOUR + (255,), 2)
    draw.text((left + 16 + row * 1.4, y), "key -> value", fill=(0, 0, 0, 255), font=font)
    return canvas.convert("RGB")


def write_overlay(path, image, result: dict) -> Path:
    """Render and write the overlay PNG atomically."""
    buffer = io.BytesIO()
    render_overlay(image, result).save(buffer, format="PNG")
    atomic_write_bytes(path, buffer.getvalue())
    return Path(path)


__all__ = ["LABEL_COLOURS", "render_overlay", "write_overlay"]
