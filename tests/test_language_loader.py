"""The strict trial loader: every malformed trial file is a TrialError naming file, line and
entry (exit 2 through check-trial), never a crash and never a silently different trial."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fhir_cohort.cli import main
from fhir_cohort.criteria.language import TrialError, load, parse_trial

ROOT = Path(__file__).resolve().parents[1]
QUERIES = ROOT / "queries"
TEXTS = {name: (QUERIES / f"{name}.yaml").read_text() for name in ("misle", "surpass2")}
DATA = {name: yaml.safe_load(text) for name, text in TEXTS.items()}
DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


def parse(text: str, name: str = "misle"):
    return parse_trial(text, f"{name}.yaml", name, QUERIES / "valuesets")


def line_of(text: str, fragment: str) -> int:
    return text[: text.index(fragment)].count("\n") + 1


def problems(text: str, name: str = "misle") -> list[str]:
    with pytest.raises(TrialError) as caught:
        parse(text, name)
    return caught.value.problems


def test_both_trials_load():
    assert parse(TEXTS["misle"]).id == "misle"
    assert parse(TEXTS["surpass2"], "surpass2").id == "surpass2"


def test_misspelt_key_names_file_line_path_and_suggests():
    text = TEXTS["misle"].replace("window_days: 90", "window_dayz: 90")
    assert problems(text) == [
        f"misle.yaml:{line_of(text, 'window_dayz')}: inclusions.activity.rule.window_dayz: "
        "unknown key; did you mean window_days?"
    ]


def test_misspelt_key_deep_in_a_list():
    text = TEXTS["misle"].replace("{lab: hbsag, positive: true, occasion: latest}",
                                  "{lab: hbsag, positive: true, ocasion: latest}")  # fmt: skip
    assert problems(text) == [
        f"misle.yaml:{line_of(text, 'ocasion')}: exclusions.hepatitis_b.rules[1].rule.ocasion: "
        "unknown key; did you mean occasion?"
    ]


@pytest.mark.parametrize(
    ("old", "new", "path", "why"),
    [
        ("occasions: 2\n", "occasions: two\n", "inclusions.acr.rule.of.renal.any[2].occasions",
         "Input should be a valid integer"),
        ("ana: {lab: ana, titer_at_least: 80}", "ana: ana", "inclusions.acr.rule.of.ana",
         "a rule is a mapping with one of"),
        ("{outcome: excluded, rule: {condition: hiv-infection}}",
         "{outcome: excluded, rule: {condition: hiv-infection, status: latest}}",
         "exclusions.hiv.rules[0].rule.status", "Input should be 'any' or 'current'"),
        ("within_days: 90}}", "within_days: -90}}", "exclusions.dialysis.rules[1].rule.within_days",
         "greater than or equal to 0"),
        ("{age: {min: 18, max: 65}}", "{age: {min: 65, max: 18}}", "inclusions.age.rule.age",
         "min 65 is above max 18"),
        ("at_least: 4\n      otherwise", "at_least: 12\n      otherwise", "inclusions.acr.rule",
         "at_least 12 is more than its 11 rules"),
        ("belimumab_washout: {washout: belimumab, months: 2}",
         "belimumab_washout: {washout: belimumab, months: '2'}",
         "exclusions.belimumab_washout.months", "Input should be a valid integer"),
    ],
)  # fmt: skip
def test_wrong_types_and_impossible_values(old, new, path, why):
    text = TEXTS["misle"].replace(old, new, 1)
    assert text != TEXTS["misle"]
    found = problems(text)
    assert re.match(rf"misle\.yaml:\d+: {re.escape(path)}: .*{re.escape(why)}", found[0]), found


@pytest.mark.parametrize(
    ("old", "new", "path", "why"),
    [
        ("{condition: acr-malar-rash}", "{condition: acr-malar-rashes}",
         "inclusions.acr.rule.of.malar_rash.condition", "acr-malar-rashes.json does not exist"),
        ("{lab: ana, titer_at_least: 80}", "{lab: anna, titer_at_least: 80}",
         "inclusions.acr.rule.of.ana.lab", "unknown lab 'anna'; did you mean ana?"),
        ("{washout: belimumab, months: 2}", "{washout: belimumabb, months: 2}",
         "exclusions.belimumab_washout.washout",
         "unknown drug 'belimumabb'; did you mean belimumab?"),
        ("- {criterion: acr}", "- {criterion: acrr}", "candidate_pool.any[1].criterion",
         "unknown inclusion 'acrr'; did you mean acr?"),
        ("{per_met_child: acr, points: 10}", "{per_met_child: activity.acute, points: 10}",
         "ranking[0].per_met_child", "'activity.acute' is not an at_least rule"),
        ("{rule_met: activity.acute, points: 15}", "{rule_met: activity.chronic, points: 15}",
         "ranking[2].rule_met", "path 'activity.chronic' names no inclusion or rule"),
        ("unless_followed_by: hcv_rna}}", "unless_followed_by: hcv_dna}}",
         "exclusions.hepatitis_c.rules[2].rule.unless_followed_by", "unknown lab 'hcv_dna'"),
        ("{lab: body_temperature, above: 38}", "{lab: anti_sm, above: 38}",
         "inclusions.activity.rule.any[1].score.items.fever.rule.above",
         "lab 'anti_sm' has no unit, so above cannot be read"),
        ("funnel: {pool: pool}", "funnel: {pool: lupus}", "funnel.pool", "unknown label 'lupus'"),
        ("trial: misle", "trial: lupus", "trial", "the id must be the file's name 'misle'"),
        ("  deceased: Deceased\n", "", "exclusions.deceased", "'deceased' has no label"),
    ],
)  # fmt: skip
def test_unknown_names(old, new, path, why):
    text = TEXTS["misle"].replace(old, new, 1)
    assert text != TEXTS["misle"]
    found = problems(text)
    assert any(re.match(rf"misle\.yaml:\d+: {re.escape(path)}: .*{re.escape(why)}", p)
               for p in found), found  # fmt: skip


def test_duplicate_key_and_bad_yaml():
    text = TEXTS["misle"].replace(
        "  age:\n    rule:", "  age:\n    rule: {age: {min: 1}}\n    rule:"
    )
    second = line_of(text, "    rule: {age: {min: 1}}") + 1
    assert problems(text) == [f"misle.yaml:{second}: rule: duplicate key"]
    assert problems("trial: [misle\n")[0].startswith("misle.yaml:2: not valid YAML")
    assert problems("")[0] == "misle.yaml: the file is empty"
    assert "Input should be a valid dictionary" in problems("- misle\n")[0]


def test_server_searches_must_cover_the_pool():
    text = TEXTS["misle"].replace(
        "acr-oral-ulcers, acr-arthritis, acr-serositis, acr-neurologic, acr-immunologic]",
        "acr-oral-ulcers]",
    )
    found = problems(text)
    assert len(found) == 1
    assert found[0].startswith(f"misle.yaml:{line_of(text, 'candidate_searches')}: ")
    assert "do not cover the candidate pool" in found[0]


def test_check_trial_exit_codes(tmp_path, capsys):
    (tmp_path / "valuesets").symlink_to(QUERIES / "valuesets")
    bad = tmp_path / "misle.yaml"
    bad.write_text(TEXTS["misle"].replace("window_days: 90", "window_dayz: 90"))
    assert main(["check-trial", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "misle.yaml:" in err and "window_dayz: unknown key; did you mean window_days?" in err
    assert main(["check-trial", "no-such-trial"]) == 2
    assert "unknown trial 'no-such-trial'; known trials: misle, surpass2" in capsys.readouterr().err
    assert main(["check-trial", "misle"]) == 0
    out = capsys.readouterr().out
    assert "at least 4 of (otherwise not-met)" in out
    assert "complete: every patient the pool could take has a searched code" in out
    assert "  lab-anticardiolipin: 2; 0" in out


# --------------------------------------------------------------------------- property


def _paths(node, prefix=()):
    yield prefix
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _paths(value, (*prefix, i))


JUNK = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 10**6), st.floats(allow_nan=True),
    st.text(max_size=12), st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=8), st.integers(), max_size=2),
)  # fmt: skip


@st.composite
def mutated(draw):
    name = draw(st.sampled_from(sorted(TEXTS)))
    data = copy.deepcopy(DATA[name])
    paths = [p for p in _paths(data) if p]
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(paths))
        parent = data
        try:
            for part in path[:-1]:
                parent = parent[part]
            key = path[-1]
            action = draw(st.sampled_from(["replace", "delete", "rename", "insert"]))
            if action == "replace":
                parent[key] = draw(JUNK)
            elif action == "delete":
                del parent[key]
            elif action == "rename" and isinstance(parent, dict):
                parent[draw(st.text(min_size=1, max_size=10))] = parent.pop(key)
            elif isinstance(parent, dict):
                parent[draw(st.text(min_size=1, max_size=10))] = draw(JUNK)
        except (KeyError, IndexError, TypeError):
            continue
    return name, yaml.dump(data, Dumper=DUMPER, allow_unicode=True, sort_keys=False)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated())
def test_mutated_trial_files_only_ever_raise_trial_error(case):
    name, text = case
    try:
        trial = parse(text, name)
    except TrialError as error:
        assert error.problems and all(p.startswith(f"{name}.yaml") for p in error.problems)
    else:
        assert trial.id == name


def test_loads_by_name_from_queries():
    assert load("surpass2").spec.inclusions.keys() == {
        "age", "t2d_duration", "hba1c", "metformin", "bmi", "egfr",
    }  # fmt: skip
