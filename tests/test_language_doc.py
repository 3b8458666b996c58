"""docs/trial-language.md is the page scripts/trial_language_doc.py writes from the schema."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_reference_page_is_current():
    spec = importlib.util.spec_from_file_location("doc", ROOT / "scripts/trial_language_doc.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    written = (ROOT / "docs" / "trial-language.md").read_text(encoding="utf-8")
    assert written == module.page(), "run: python scripts/trial_language_doc.py"
    for kind in ("ConditionRule", "LabRule", "AtLeastRule", "ScoreRule", "IfRule", "LabSpec"):
        assert f"## {kind}\n" in written
