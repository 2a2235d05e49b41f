"""``LABEL=DIR`` lists: how every CLI names its ensembles (``--targets``, ``--surrogate_dir``,
``--ensembles``), parsed by one function so they accept and reject the same things."""

from __future__ import annotations

import os
from typing import Callable, List, Mapping, Optional, Sequence, Tuple, Type


def parse_label_dirs(spec, what: str, example: str, error: Type[Exception] = ValueError,
                     bare_label: Optional[Callable[[int], str]] = None,
                     reserved: Sequence[str] = ()) -> List[Tuple[str, str]]:
    """``"A=runs/a,B=runs/b"`` (or a list of such items / (label, dir) pairs, or a mapping) ->
    ``[(label, dir), ...]`` in order.

    ``what`` names an item in messages ("Target", "Surrogate", ...) and ``example`` shows a valid
    one. With ``bare_label``, an item without ``=`` (or an existing path containing one) is a bare
    dir labelled ``bare_label(k)`` for k = 1, 2, ... skipping labels already used; without it a
    bare item is an error. Labels must be non-empty, unique and not in ``reserved``; every error is
    ``error`` with a message that says how to fix the list.
    """
    if isinstance(spec, Mapping):
        items = list(spec.items())
    elif isinstance(spec, str):
        items = spec.split(",")
    else:
        items = list(spec or ())
    parsed = []
    for item in items:
        if isinstance(item, (tuple, list)) and len(item) == 2:
            label, path = (str(p).strip() for p in item)
            shown = f"{label}={path}"
        else:
            shown = str(item).strip()
            if not shown:
                continue
            if "=" in shown and not (bare_label and os.path.exists(shown)):
                label, path = (p.strip() for p in shown.split("=", 1))
            elif bare_label:
                label, path = None, shown
            else:
                raise error(f"{what} {shown!r} is not LABEL=DIR (e.g. {example}).")
        if label == "":
            raise error(f"{what} {shown!r}: empty label; use LABEL=DIR (e.g. {example}).")
        if not path:
            raise error(f"{what} {shown!r} has no directory; use LABEL=DIR (e.g. {example}).")
        parsed.append((label, path))
    if not parsed:
        raise error(f"No {what.lower()} given; pass LABEL=DIR items, e.g. {example}.")
    used = {label for label, _ in parsed if label is not None}
    out, k = [], 1
    for label, path in parsed:
        if label is None:
            while (label := bare_label(k)) in used:
                k += 1
            used.add(label)
        out.append((label, path))
    labels = [label for label, _ in out]
    dup = sorted({label for label in labels if labels.count(label) > 1})
    if dup:
        raise error(f"{what} labels must be unique; {', '.join(map(repr, dup))} appears more than once.")
    bad = [label for label in labels if label in reserved]
    if bad:
        raise error(f"{what} label {bad[0]!r} is reserved ({', '.join(map(repr, reserved))}); "
                    f"choose another.")
    return out


__all__ = ["parse_label_dirs"]
