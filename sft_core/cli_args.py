"""Command-line options generated from dataclasses, so a new config field appears in every CLI at once.

    add_dataclass_arguments(parser.add_argument_group("isolation (EPIConfig)"), EPIConfig, exclude={"method"})
    config = dataclass_from_args(EPIConfig, args, method="epi")

Each field becomes ``--field-name`` (underscores -> dashes) with the field's type and default (never a
copied literal). Help text comes from ``metadata["help"]`` or, failing that, from the ``Args:`` section
of the dataclass docstring. ``bool`` fields get ``--x`` / ``--no-x``. Extra ``metadata`` keys: ``choices``,
``metavar``, ``flag`` (another option name), ``aliases`` (deprecated names, hidden from ``--help``),
``action`` ("append" for repeatable options), ``required``.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import typing

_MISSING = dataclasses.MISSING


def docstring_help(cls) -> dict[str, str]:
    """``{field: help}`` from a Google-style ``Args:`` section (continuation lines joined)."""
    doc = cls.__doc__ or ""
    match = re.search(r"^\s*Args:\s*$(.*)", doc, flags=re.M | re.S)
    if not match:
        return {}
    helps, current, indent = {}, None, None
    for line in match.group(1).splitlines():
        if not line.strip():
            continue
        stripped = line.lstrip()
        this_indent = len(line) - len(stripped)
        entry = re.match(r"(\w+):\s*(.*)", stripped)
        if entry and (indent is None or this_indent <= indent):
            indent, current = this_indent, entry.group(1)
            helps[current] = entry.group(2)
        elif current is not None and this_indent > (indent or 0):
            helps[current] += " " + stripped
        else:
            break
    return {name: re.sub(r"``?([^`]+)``?", r"\1", text).replace("%", "%%") for name, text in helps.items()}


def _base_type(annotation):
    """(python type, is_list) for str/int/float/bool, Optional[...] and list[...] annotations."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _base_type(args[0]) if len(args) == 1 else (str, False)
    if origin in (list, tuple):
        (inner, *_) = typing.get_args(annotation) or (str,)
        return _base_type(inner)[0], True
    return (annotation if annotation in (str, int, float, bool) else str), False


def add_dataclass_arguments(parser, cls, *, exclude: set[str] | frozenset = frozenset()) -> list[str]:
    """Add one option per dataclass field of ``cls`` (except ``exclude``); returns the field names added."""
    hints = typing.get_type_hints(cls)
    doc_helps = docstring_help(cls)
    added = []
    for field in dataclasses.fields(cls):
        if field.name in exclude or not field.init:
            continue
        meta = dict(field.metadata)
        kind, is_list = _base_type(hints[field.name])
        default = field.default if field.default is not _MISSING else (
            field.default_factory() if field.default_factory is not _MISSING else None)
        flag = meta.get("flag") or "--" + field.name.replace("_", "-")
        help_text = meta.get("help") or doc_helps.get(field.name) or ""
        kwargs = {"dest": field.name, "default": default}
        if meta.get("required"):
            kwargs["required"] = True
        if kind is bool:
            kwargs.update(action=argparse.BooleanOptionalAction, help=help_text + " (default: %(default)s)")
        else:
            shown = "" if meta.get("required") or default is None else " (default: %(default)s)"
            kwargs.update(type=kind, help=help_text + shown)
            if is_list or meta.get("action") == "append":
                kwargs.update(action="append", default=None)
            for key in ("choices", "metavar"):
                if key in meta:
                    kwargs[key] = meta[key]
        parser.add_argument(flag, **kwargs)
        for alias in meta.get("aliases", ()):
            hidden = {k: v for k, v in kwargs.items() if k not in ("help", "required")}
            hidden["default"] = argparse.SUPPRESS
            parser.add_argument(alias, help=argparse.SUPPRESS, **hidden)
        added.append(field.name)
    return added


def dataclass_from_args(cls, args: argparse.Namespace, **overrides):
    """Build ``cls`` from the parsed options named after its fields (plus ``overrides``)."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if f.init and hasattr(args, f.name)}
    values.update(overrides)
    return cls(**values)
