"""Labels: the words a coordinator reads for a trial's keys.

Rule: one function, :func:`label`, turns a key (a criterion, an exclusion, a funnel
step) into words: the trial's own label table when its file has one (``labels:``),
else the key humanised. No trial's words are written here.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from ..criteria.language import queries_dir


def humanised(key: str) -> str:
    """A key as words when the trial offers no label.

    >>> humanised("hepatitis_b"), humanised("not-eligible")
    ('Hepatitis b', 'Not eligible')
    """
    words = key.replace("_", " ").replace("-", " ").strip()
    return words[:1].upper() + words[1:]


def label(key: str, labels: dict[str, str]) -> str:
    """The trial's label for ``key``, else the key humanised.

    >>> label("hiv", {"hiv": "HIV"}), label("dialysis", {})
    ('HIV', 'Dialysis')
    """
    return labels.get(key) or humanised(key)


def _labels_in(path: Path) -> tuple[str | None, dict[str, str]]:
    """(the trial id, its label table) of a trial file; nothing when it cannot be read."""
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return None, {}
    if not isinstance(raw, dict):
        return None, {}
    table = raw.get("labels")
    labels = (
        {str(k): str(v) for k, v in table.items() if isinstance(v, str)}
        if isinstance(table, dict)
        else {}
    )
    trial = raw.get("trial", raw.get("id"))
    return (str(trial) if trial is not None else None), labels


def trial_labels(trial: str, files: tuple[Path, ...] = ()) -> dict[str, str]:
    """The label table for ``trial``: from one of ``files`` whose id it is, else from the
    bundled trial of that name; empty when none has one."""
    bundled = (queries_dir() / f"{trial}.yaml",)
    for path in (*files, *bundled):
        found, labels = _labels_in(path)
        if labels and (found == trial or path in bundled):
            return labels
    return {}
