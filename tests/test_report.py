"""report.html: self-contained, escaped, with the funnel chart and a card per candidate,
each candidate's evidence timeline, and what changed since the previous run."""

from __future__ import annotations

import errno
import html as htmllib
import re
import stat
from datetime import date, timedelta

import jinja2.bccache
import pytest
from builders import D, eligible_core, run
from conftest import COHORT
from misle_view import MisleView

from fhir_cohort.changes import Change, Changes, ReviewState, compare, snapshot
from fhir_cohort.criteria.language import load
from fhir_cohort.criteria.rank_terms import Ranked as Candidate
from fhir_cohort.criteria.results import WASHOUT
from fhir_cohort.engines.embedded import screen
from fhir_cohort.outputs.report import (
    RECENT_SHARE,
    TIMELINE_WIDTH,
    TimeScale,
    funnel_rows,
    render,
    timeline,
)
from fhir_cohort.reviews import Review
from fhir_cohort.sources.files import FileSource
from fhir_cohort.state import State

LATER = date(2026, 7, 22)  # the same data screened again, three weeks on
YEAR = timedelta(days=365)  # the report's "recent" part: the year before as-of
MARGIN = timedelta(days=15)  # the axis runs on a little past the latest date drawn
PREVIOUS_RUN = {"id": 7, "as_of": "2026-06-30", "finished_at": "2026-06-30T18:05:00+00:00"}
REVIEWER = "Dr. Ada Okafor"
REVIEWED_AT = "2026-07-01T09:30:00+00:00"

P05 = "p05-age-65-day-before-66th"
P24 = "p24-undated-conditions"
P26 = "p26-sle-code-recorded-after-d"
P74 = "p74-activity-after-d"
P113 = "p113-statement-stopped-start-only"
BIOLOGICS = "Other biologics in the last 6 months"  # the trial's label for biologic_washout


@pytest.fixture(scope="module")
def screening(cohort_screening):
    return cohort_screening


@pytest.fixture(scope="module")
def later(trial):
    """The bundled cohort screened again at LATER: nothing in the data changed, time did."""
    return screen([FileSource(COHORT)], trial, LATER)


MISLE = load("misle")
ACR = MISLE.label("acr")  # the lane of the ACR criteria


def draw(candidate: Candidate, as_of: date) -> dict:
    return timeline(candidate, as_of, MISLE)


def snapshots(screening) -> dict[str, dict]:
    return {c.result.patient: snapshot(c) for c in screening.candidates}


def candidate(screening, patient: str) -> Candidate:
    return next(c for c in screening.candidates if c.result.patient == patient)


# -- helpers that read the rendered page --------------------------------------------------


def text(fragment: str) -> str:
    """What a browser would show for an HTML fragment: tags dropped, entities decoded."""
    return " ".join(htmllib.unescape(re.sub(r"<[^>]+>", " ", fragment)).split())


def changes_section(page: str) -> str:
    return page.split('<section id="changes" class="changes">', 1)[1].split("</section>", 1)[0]


def change_rows(page: str) -> list[dict]:
    """The rows of the changes table: kind (data-change), patient id, and the cells' text."""
    rows = []
    for kind, row in re.findall(r'<tr data-change="([a-z]+)">(.*?)</tr>', changes_section(page)):
        cells = re.findall(r"<td>(.*?)</td>", row)
        patient = htmllib.unescape(re.search(r"<small>(.*?)</small>", cells[1]).group(1))
        rows.append(
            {
                "kind": kind,
                "patient": patient,
                "title": text(cells[0]),
                "status": text(cells[2]),
                "why": text(cells[3]),
                "why_html": cells[3],
            }
        )
    return rows


def candidate_rows(page: str) -> dict[str, dict]:
    """Both candidate tables ("candidates" to contact, "acted" already acted on) by
    patient id, in page order: the table, review, reason and since-last-run cells as text."""
    rows = {}
    for table_id in ("candidates", "acted"):
        if f'<table id="{table_id}">' not in page:
            continue
        table = page.split(f'<table id="{table_id}">', 1)[1].split("</table>", 1)[0]
        for row in re.findall(r'<tr data-status="[a-z-]+">(.*?)</tr>', table, re.S):
            patient = htmllib.unescape(re.search(r"<small>(.*?)</small>", row).group(1))
            cells = re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)
            review = re.search(r'<td class="review"[^>]*>(.*?)</td>', row, re.S).group(1)
            reason = re.search(r'<td class="reason"[^>]*>(.*?)</td>', row, re.S).group(1)
            rows[patient] = {
                "table": table_id,
                "review": text(review),
                "review_html": review,
                "reason": text(reason),
                "since": text(cells[-1]),
            }
    return rows


def cards(page: str) -> dict[str, str]:
    """Each candidate's card (raw HTML) by patient id."""
    out = {}
    for card in re.findall(r'<section class="card" id="p-\d+">(.*?)</section>', page, re.S):
        patient = htmllib.unescape(re.search(r"<small>\((.*?)\)</small>", card).group(1))
        out[patient] = card
    return out


# -- the existing checks ---------------------------------------------------------------


def test_markup_from_the_data_is_shown_as_text(screening):
    html = render(screening)
    assert "<script>alert(1)</script>" not in html
    assert "O&#39;Brien &lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert len(re.findall(r"<script>", html)) == 1  # only the page's own filter script


def test_the_compiled_template_is_kept_owner_only_and_renders_the_same(screening, tmp_path):
    """The state keeps the report's compiled template between runs (compiling it is a
    tenth of a second of every run): owner-only, since it is loaded as code, and the
    page is the same whether compiled now or loaded."""
    compiled = State(tmp_path / "state").compiled_templates()
    assert stat.S_IMODE(compiled.stat().st_mode) == 0o700
    fresh = render(screening)
    assert render(screening, compiled=compiled) == fresh
    kept = sorted(compiled.iterdir())
    assert len(kept) == 2  # the page and the list's rows it includes
    assert all(stat.S_IMODE(k.stat().st_mode) & 0o077 == 0 for k in kept)
    written = [k.stat().st_mtime_ns for k in kept]
    assert render(screening, compiled=compiled) == fresh
    assert [k.stat().st_mtime_ns for k in kept] == written  # loaded, not compiled again


def test_a_compiled_template_that_cannot_be_kept_fails_nothing(screening, tmp_path, monkeypatch):
    """A full disk (or a damaged file) in the template folder costs a compile, not the run."""
    compiled = State(tmp_path / "state").compiled_templates()
    assert compiled is not None

    def full(self, stream):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(jinja2.bccache.Bucket, "write_bytecode", full)
    fresh = render(screening)
    assert render(screening, compiled=compiled) == fresh
    assert [p for p in compiled.iterdir()] == []  # nothing half-written left behind
    monkeypatch.undo()
    assert render(screening, compiled=compiled) == fresh
    for kept in compiled.iterdir():
        kept.write_bytes(kept.read_bytes()[:100])  # truncated
    assert render(screening, compiled=compiled) == fresh


def test_report_is_self_contained(screening):
    html = render(screening)
    assert not re.search(r"""(src|href)=["']https?://""", html)
    assert "@import" not in html


def test_funnel_chart_and_one_card_per_candidate(screening):
    html = render(screening)
    rows = funnel_rows(screening)
    bars = [bar for row in rows for bar in row]
    funnel = screening.funnel.to_dict()
    steps = {s["id"]: s for s in funnel["steps"]}
    # read, then each step of funnel.steps in order, the last two side by side
    assert [(b["label"], b["count"]) for b in bars] == [
        ("patients read", funnel["patients_read"]),
        *((s["label"], s["count"]) for s in funnel["steps"][:-2]),
        ("eligible now", steps["eligible"]["count"]),
        ("in washout", steps["washout"]["count"]),
    ]
    assert [b["label"] for b in rows[-1]] == ["eligible now", "in washout"]
    assert [b["label"] for b in bars[1:5]] == [
        "lupus evidence",
        "Age 18–65",
        "ACR 1997 criteria (4 or more of 11)",
        "Clinically active SLE",
    ]
    # a real funnel: each row no wider than the one above it, each centred
    widths = [sum(b["width"] for b in row) for row in rows]
    assert widths == sorted(widths, reverse=True)
    for row in rows[:-1]:
        (bar,) = row
        assert abs(2 * bar["x"] + bar["width"] - 640) <= 1
    assert html.count('class="funnel-bar"') == len(bars)
    assert html.count('class="card"') == len(screening.candidates) == 115
    first = screening.candidates[0].result
    assert 'id="p-1"' in html and first.patient in html


def test_exclusion_counts_are_apart_from_the_funnel_in_plain_words(screening):
    html = render(screening)
    funnel_svg = html.split('<svg id="funnel"', 1)[1].split("</svg>", 1)[0]
    counts = text(html.split('<p id="exclusion-counts">', 1)[1].split("</p>", 1)[0])
    washouts = screening.funnel.to_dict()["exclusions"]["belimumab_washout"]["washout"]
    assert f"Belimumab in the last 2 months ({washouts} washout)" in counts
    assert "Belimumab" not in funnel_svg and "excluded" not in funnel_svg
    for key in screening.trial.spec.exclusions:
        assert key not in counts


# -- timeline(): the scale ------------------------------------------------------------


def test_time_scale_gives_the_last_year_most_of_the_width():
    """TimeScale's documented behaviour, the basis of the expected x values below."""
    start, seam, end, width = date(2016, 1, 1), date(2025, 6, 30), date(2026, 9, 1), 500
    left = round(width * (1 - RECENT_SHARE))  # the older years' share of the axis
    scale = TimeScale(start, seam, end, width)
    assert (scale.x(start), scale.x(seam), scale.x(end)) == (0, left, width) == (0, 150, 500)
    # both parts are linear: halfway through a part is halfway along its pixels
    old_middle = start + (seam - start) / 2
    recent_middle = seam + (end - seam) / 2
    assert abs(scale.x(old_middle) - left / 2) <= 1
    assert abs(scale.x(recent_middle) - (left + (width - left) / 2)) <= 1
    # without anything older than the seam, the recent part is the whole axis
    flat = TimeScale(None, seam, end, width)
    assert (flat.x(seam), flat.x(end)) == (0, width)
    assert abs(flat.x(recent_middle) - width / 2) <= 1


def timeline_days(candidate: Candidate) -> list[date]:
    """Every date the timeline draws: dated evidence in each lane, the activity window and
    each washout's end."""
    result = MisleView(candidate.result)
    findings = [*result.acr.criteria.values(), *result.exclusions.values()]
    days = [e.date for f in findings for e in f.evidence if e.date]
    days += [e.date for e in result.activity.evidence if e.date]
    days += [result.activity.window_start, result.activity.window_end]
    days += [f.until for f in result.exclusions.values() if f.result == WASHOUT and f.until]
    return days


def expected_scale(candidate: Candidate, as_of: date) -> TimeScale:
    """The axis as documented: the year before as-of is the recent part; evidence older
    than that is compressed to the left (and only then is there a compressed part); the
    axis runs from the earliest date to a little past the latest (as-of included)."""
    days = timeline_days(candidate)
    seam = as_of - YEAR
    earliest = min(days, default=seam)
    return TimeScale(
        earliest if earliest < seam else None,
        seam,
        max([as_of, *days]) + MARGIN,
        TIMELINE_WIDTH,
    )


def lane(drawn: dict, label: str) -> dict:
    (found,) = [lane for lane in drawn["lanes"] if lane["label"] == label]
    return found


def tick(drawn: dict, prefix: str) -> dict:
    (found,) = [t for t in drawn["ticks"] if t["label"].startswith(prefix)]
    return found


# -- timeline(): washouts, as-of and eligible-from ---------------------------------------


def test_washout_bar_runs_from_the_last_exposure_to_the_end_of_the_washout(screening, expected):
    as_of = screening.as_of
    c = candidate(screening, P113)
    finding = c.result.exclusions["biologic_washout"]
    until = date.fromisoformat(
        expected["patients"][P113]["exclusions"]["biologic_washout"]["until"]
    )
    assert (finding.result, finding.until, c.result.eligible_from) == (WASHOUT, until, until)
    (exposure,) = finding.evidence
    assert exposure.date == date(2026, 1, 20)  # rituximab last taken

    drawn = draw(c, as_of)
    scale = expected_scale(c, as_of)
    washout = lane(drawn, BIOLOGICS)
    (bar,) = washout["bars"]
    assert bar["washout"] is True
    assert bar["x"] == scale.x(exposure.date)
    assert bar["x"] + bar["width"] == scale.x(until)
    assert bar["label"] == f"{BIOLOGICS} until {until.isoformat()}"
    # the last exposure is drawn as a point where the bar starts
    assert [p["x"] for p in washout["points"]] == [bar["x"]]
    assert washout["points"][0]["label"].startswith(exposure.date.isoformat())

    # the as-of line and the eligible-from mark, with their tick labels
    assert drawn["as_of"] == scale.x(as_of) == tick(drawn, "as of ")["x"]
    assert tick(drawn, "as of ")["label"] == f"as of {as_of.isoformat()}"
    assert drawn["eligible"] == scale.x(until) == tick(drawn, "eligible ")["x"]
    assert tick(drawn, "eligible ")["label"] == f"eligible {until.isoformat()}"
    assert drawn["as_of"] < drawn["eligible"] == bar["x"] + bar["width"]
    # scale-free check: within the last year, pixels are proportional to days
    seam_x = drawn["seam"]
    per_day = (drawn["as_of"] - seam_x) / (as_of - (as_of - YEAR)).days
    assert abs(drawn["eligible"] - drawn["as_of"] - per_day * (until - as_of).days) <= 1
    assert abs(drawn["as_of"] - bar["x"] - per_day * (as_of - exposure.date).days) <= 1


def washouts_in_the_fixture(expected) -> list[tuple[str, str, date]]:
    return [
        (patient, key, date.fromisoformat(finding["until"]))
        for patient, outcome in expected["patients"].items()
        for key, finding in outcome["exclusions"].items()
        if isinstance(finding, dict) and finding["result"] == WASHOUT
    ]


def test_every_washout_in_the_fixture_is_drawn_to_its_end_date(screening, expected):
    washouts = washouts_in_the_fixture(expected)
    assert len(washouts) >= 15  # incl. two washouts for one patient, and an excluded one
    for patient, key, until in washouts:
        c = candidate(screening, patient)
        drawn = draw(c, screening.as_of)
        scale = expected_scale(c, screening.as_of)
        last = max(e.date for e in c.result.exclusions[key].evidence if e.date)
        (bar,) = lane(drawn, screening.trial.label(key))["bars"]
        assert bar["x"] == scale.x(last), (patient, key)
        assert bar["x"] + bar["width"] == scale.x(until), (patient, key)
        assert bar["label"] == f"{screening.trial.label(key)} until {until.isoformat()}"
        eligible = date.fromisoformat(expected["patients"][patient]["eligible_from"])
        assert drawn["eligible"] == scale.x(eligible) >= bar["x"] + bar["width"], patient
        assert drawn["as_of"] == scale.x(screening.as_of), patient


def test_two_washouts_each_end_at_their_own_date(screening):
    """p110: rituximab until 2026-07-15, belimumab until 2026-08-01 (the later decides)."""
    c = candidate(screening, "p110-two-washouts-later-wins")
    drawn = draw(c, screening.as_of)
    scale = expected_scale(c, screening.as_of)
    (biologic,) = lane(drawn, BIOLOGICS)["bars"]
    (belimumab,) = lane(drawn, "Belimumab in the last 2 months")["bars"]
    assert biologic["x"] + biologic["width"] == scale.x(date(2026, 7, 15))
    assert belimumab["x"] + belimumab["width"] == scale.x(date(2026, 8, 1)) == drawn["eligible"]
    assert biologic["x"] + biologic["width"] < drawn["eligible"]


def test_a_candidate_without_washout_has_no_eligible_mark(screening):
    c = candidate(screening, "p01-eligible-baseline")
    drawn = draw(c, screening.as_of)
    assert drawn["eligible"] is None
    assert not [t for t in drawn["ticks"] if t["label"].startswith("eligible")]
    assert not [b for lane in drawn["lanes"] for b in lane["bars"] if b["washout"]]


# -- timeline(): the compressed older years ---------------------------------------------


def test_evidence_older_than_a_year_is_compressed_to_the_left(screening):
    as_of = screening.as_of
    c = candidate(screening, P113)  # ANA 2018-04-20 ... anti-dsDNA 2026-06-01
    drawn = draw(c, as_of)
    scale = expected_scale(c, as_of)
    seam = as_of - YEAR
    assert scale.start == date(2018, 4, 20)
    left = round(TIMELINE_WIDTH * (1 - RECENT_SHARE))
    assert drawn["seam"] == scale.x(seam) == left
    assert tick(drawn, seam.isoformat())["x"] == left
    assert drawn["ticks"][0] == {"x": 0, "label": "2018-04-20"}  # the earliest date
    for lane_ in drawn["lanes"]:
        for point in lane_["points"]:
            day = date.fromisoformat(point["label"][:10])
            assert (point["x"] < left) == (day < seam), point
    # eight years of history take less room than the last year
    assert drawn["seam"] < TIMELINE_WIDTH - drawn["seam"]


def recent_only_candidate(trial) -> Candidate:
    """An eligible patient whose every piece of evidence is from the last year."""
    resources = eligible_core(D)
    for resource in resources:
        if resource["resourceType"] == "Condition":
            resource["onsetDateTime"] = "2026-01-10"
        if resource.get("id") == "o-ana":
            resource["effectiveDateTime"] = "2026-02-01"
    result = run(trial, resources)
    assert result.status == "eligible"
    return Candidate(1, 0, result.trial_result)


def test_only_recent_evidence_has_no_compressed_part(trial):
    c = recent_only_candidate(trial)
    drawn = draw(c, D)
    scale = expected_scale(c, D)
    assert scale.start is None
    assert drawn["seam"] is None
    labels = [t["label"] for t in drawn["ticks"]]
    assert labels == [(D - YEAR).isoformat(), f"as of {D.isoformat()}"]
    assert drawn["ticks"][0]["x"] == 0  # a year before as-of is the left edge
    assert drawn["as_of"] == scale.x(D)
    acr = lane(drawn, ACR)["points"]
    dated = [e for f in MisleView(c.result).acr.criteria.values() for e in f.evidence if e.date]
    assert len(acr) == len(dated) == 5
    assert [p["x"] for p in acr] == [scale.x(e.date) for e in dated]
    # with the whole width for one year, January is well right of the left edge
    assert all(p["x"] > TIMELINE_WIDTH / 3 for p in acr)


def test_the_bundled_cohort_has_one_timeline_without_seam(screening):
    """p15 has no ACR evidence and only this year's activity window: no seam; all the
    others have evidence from earlier years and a seam."""
    without = [
        c.result.patient for c in screening.candidates if draw(c, screening.as_of)["seam"] is None
    ]
    assert without == ["p15-synthea-200936003-only"]
    for c in screening.candidates:
        assert (draw(c, screening.as_of)["seam"] is None) == (
            expected_scale(c, screening.as_of).start is None
        )


# -- timeline(): which evidence is drawn ------------------------------------------------


def test_every_dated_acr_evidence_item_is_a_point(screening):
    for c in screening.candidates:
        drawn = draw(c, screening.as_of)
        scale = expected_scale(c, screening.as_of)
        dated = [e for f in MisleView(c.result).acr.criteria.values() for e in f.evidence if e.date]
        points = lane(drawn, ACR)["points"]
        assert [(p["x"], p["label"][:10]) for p in points] == [
            (scale.x(e.date), e.date.isoformat()) for e in dated
        ], c.result.patient


def test_undated_evidence_is_not_drawn(screening):
    """p24: the oral-ulcer Condition has neither onset nor recordedDate."""
    c = candidate(screening, P24)
    (undated,) = [
        e for f in MisleView(c.result).acr.criteria.values() for e in f.evidence if e.date is None
    ]
    assert undated.resource in {
        e.resource for e in MisleView(c.result).acr.criteria["oral_ulcers"].evidence
    }
    drawn = draw(c, screening.as_of)
    labels = [p["label"] for lane_ in drawn["lanes"] for p in lane_["points"]]
    dated = [e for f in MisleView(c.result).acr.criteria.values() for e in f.evidence if e.date]
    assert len(lane(drawn, ACR)["points"]) == len(dated) == 3
    assert all(re.match(r"\d{4}-\d{2}-\d{2} ", label) for label in labels)
    assert not any((undated.display or undated.code) in label for label in labels)
    # ... but the card's table still lists it, as undated
    card = cards(render(screening))[P24]
    assert "undated" in card and undated.resource in card


def test_the_rendered_timeline_puts_the_washout_end_on_the_eligible_line(screening):
    card = cards(render(screening))[P113]
    drawn = draw(candidate(screening, P113), screening.as_of)
    plot = drawn["plot"]
    rect = re.search(r'<rect class="washout" x="(\d+)" y="\d+" width="(\d+)"', card)
    assert rect, card
    right = int(rect.group(1)) + int(rect.group(2))
    # the green eligible-from line is drawn where the washout ends
    assert re.search(rf'<line x1="{right}" x2="{right}" y1="0" y2="\d+" stroke="#0a6b2b"', card)
    assert right == plot + drawn["eligible"]
    assert 'stroke-dasharray="2,3"' in card  # the seam
    assert f"<title>{BIOLOGICS} until 2026-07-20</title>" in card
    # p15's timeline has no seam line
    assert 'stroke-dasharray="2,3"' not in cards(render(screening))["p15-synthea-200936003-only"]


# -- "What changed since the last run" --------------------------------------------------


def test_without_history_the_report_says_so(screening):
    section = changes_section(render(screening))
    assert "No run history was kept for this screen." in section
    assert "<table" not in section and change_rows(render(screening)) == []
    rows = candidate_rows(render(screening))
    assert {row["review"] for row in rows.values()} == {"not reviewed"}
    assert {row["since"] for row in rows.values()} == {""}


def test_a_first_run_has_nothing_to_compare_with(screening):
    changes = compare(None, snapshots(screening), {}, screening.as_of, None, screening.trial.label)
    assert changes.previous is None
    page = render(screening, changes)
    section = changes_section(page)
    assert "This is the first recorded run of this screen" in section
    assert "Compared with the run of" not in section
    rows = change_rows(page)
    # nothing is new, changed or dropped on a first run; washouts ending soon still show
    assert {row["kind"] for row in rows} == {"soon"}
    assert [row["patient"] for row in rows] == [
        P113,  # 2026-07-20
        "p94-belimumab-admin-40d",  # 2026-07-21
        "p114-last-exposure-counts",  # 2026-07-25
    ]
    assert rows[0]["status"] == "washout until 2026-07-20"
    assert rows[0]["why"] == "Other biologics in the last 6 months until 2026-07-20"


@pytest.fixture(scope="module")
def changes(screening, later):
    """LATER against the run at as-of, with two review decisions:
    p113 declined with everything on record seen (nothing new since);
    p74 declined at as-of, before its July labs appeared (new evidence since)."""
    before, now = snapshots(screening), snapshots(later)
    reviews = {
        P113: Review(
            P113,
            "declined",
            "moving abroad",
            REVIEWER,
            REVIEWED_AT,
            frozenset(now[P113]["evidence"]),
        ),
        P74: Review(P74, "declined", "", REVIEWER, REVIEWED_AT, frozenset(before[P74]["evidence"])),
    }
    return compare(before, now, reviews, LATER, PREVIOUS_RUN, later.trial.label)


def soon_after(expected, as_of: date) -> list[str]:
    """Washouts in the fixture that end in the 30 days after ``as_of``, soonest first."""
    ending = [
        (date.fromisoformat(outcome["eligible_from"]), patient)
        for patient, outcome in expected["patients"].items()
        if outcome["status"] == WASHOUT
        and as_of < date.fromisoformat(outcome["eligible_from"]) <= as_of + timedelta(days=30)
    ]
    return [patient for _, patient in sorted(ending)]


def test_changes_since_the_previous_run(later, changes, expected):
    page = render(later, changes)
    section = changes_section(page)
    assert (
        "Compared with the run of 2026-06-30T18:05:00+00:00 (as of 2026-06-30): "
        f"<strong>{len(changes.new)}</strong> new, "
        f"<strong>{len(changes.status_changed)}</strong> changed, "
        f"<strong>{len(changes.dropped)}</strong> dropped out" in section
    )
    rows = change_rows(page)
    by_kind: dict[str, list[dict]] = {}
    for row in rows:
        by_kind.setdefault(row["kind"], []).append(row)
    assert {k: len(v) for k, v in by_kind.items()} == {
        "new": len(changes.new),
        "reconsider": len(changes.reconsider),
        "changed": len(changes.status_changed),
        "dropped": len(changes.dropped),
        "soon": len(changes.eligible_soon),
    }
    titles = {row["kind"]: row["title"] for row in rows}
    assert titles == {
        "new": "new",
        "reconsider": "new evidence since review",
        "changed": "changed",
        "dropped": "dropped out",
        "soon": "eligible within 30 days",
    }

    # p26's only SLE code is dated after 2026-06-30: listed for the first time now
    (new,) = by_kind["new"]
    assert new["patient"] == P26 and new["status"] == "needs-review"
    assert new["why"].startswith(
        "first listed: Age 18–65 met, ACR 1997 criteria (4 or more of 11) not-met (3)"
    )

    # the patients whose every washout ended between the runs: washout → eligible
    changed = {row["patient"]: row for row in by_kind["changed"]}
    ended = [
        (patient, key, until)
        for patient, key, until in washouts_in_the_fixture(expected)
        if expected["patients"][patient]["status"] == WASHOUT
        and date.fromisoformat(expected["patients"][patient]["eligible_from"]) <= LATER
    ]
    assert {patient for patient, _, _ in ended} == {P113, "p94-belimumab-admin-40d"}
    for patient, key, until in ended:
        assert changed[patient]["status"] == "washout → eligible"
        label = later.trial.label(key)
        assert f"washout over ({label} until {until.isoformat()})" in changed[patient]["why"]

    # p05 turned 66 on 2026-07-01
    (dropped,) = by_kind["dropped"]
    assert dropped["patient"] == P05
    assert dropped["status"] == "eligible → excluded"
    assert "now Age 18–65: 66 outside the trial's range" in dropped["why"]
    assert "Age 18–65 met → not-met" in dropped["why"]

    # washouts ending in the 30 days after LATER, soonest first, each with its end date
    soon = by_kind["soon"]
    assert [row["patient"] for row in soon] == soon_after(expected, LATER)
    assert len(soon) == 6
    for row in soon:
        until = expected["patients"][row["patient"]]["eligible_from"]
        assert row["status"] == f"washout until {until}"
        assert until in row["why"]

    # one line per patient and kind
    assert len({(row["kind"], row["patient"]) for row in rows}) == len(rows)
    assert "Nothing new, changed or dropped" not in section
    # the trial's words, never its ids (the history keeps ids; the outputs name them)
    for key in (*later.trial.spec.inclusions, *later.trial.spec.exclusions):
        id_used = re.compile(rf"(^|; |: |\(){key}\b(?![-/])")  # not inside a record's id
        assert not [row for row in rows if id_used.search(row["why"])], key


def test_the_candidate_list_and_cards_say_what_changed(later, changes):
    page = render(later, changes)
    rows = candidate_rows(page)
    assert rows[P113]["since"] == "changed"
    assert rows[P26]["since"] == "new"
    assert rows[P74]["since"] == "new evidence since review"
    assert rows["p01-eligible-baseline"]["since"] == ""
    card = text(cards(page)[P113])
    assert (
        "Since the last run: changed: washout → eligible; "
        "washout over (Other biologics in the last 6 months until 2026-07-20)" in card
    )
    # a patient who dropped out is still a candidate (excluded): the card says why
    assert rows["p05-age-65-day-before-66th"]["since"] == "dropped out"
    assert (
        "Since the last run: dropped out: eligible → excluded; now Age 18–65: 66 outside "
        "the trial's range" in text(cards(page)["p05-age-65-day-before-66th"])
    )


def test_review_decisions_in_the_table_and_cards(later, changes):
    page = render(later, changes)
    rows = candidate_rows(page)
    declined = f"declined 2026-07-01 by {REVIEWER}"
    assert rows[P113]["review"] == declined
    assert rows[P74]["review"].startswith(f"{declined}; new evidence since: ")
    assert "2026-07-05" in rows[P74]["review"]  # the July labs
    others = {p: row["review"] for p, row in rows.items() if p not in (P113, P74)}
    assert set(others.values()) == {"not reviewed"} and len(others) == len(rows) - 2

    all_cards = cards(page)
    assert f"Review: {declined}" in text(all_cards[P113])
    assert "new evidence since" not in text(all_cards[P113])
    assert f"Review: {declined}; new evidence since: " in text(all_cards[P74])
    assert "Review:" not in text(all_cards["p01-eligible-baseline"])

    # the declined patient with new evidence gets a line of its own in the changes table
    (reconsider,) = [row for row in change_rows(page) if row["kind"] == "reconsider"]
    assert reconsider["patient"] == P74
    assert reconsider["why"].startswith(f"{declined}; new evidence since: ")


def test_a_declined_patient_without_new_evidence_is_not_shown_as_new(later, screening):
    now = snapshots(later)
    review = Review(P26, "declined", "", REVIEWER, REVIEWED_AT, frozenset(now[P26]["evidence"]))
    changes = compare(snapshots(screening), now, {P26: review}, LATER, PREVIOUS_RUN)
    page = render(later, changes)
    assert [row for row in change_rows(page) if row["kind"] == "new"] == []
    assert "<strong>0</strong> new" in changes_section(page)
    assert "1 not shown as new because a reviewer declined them" in changes_section(page)
    assert candidate_rows(page)[P26]["since"] == "set aside"


def test_nothing_changed_says_so(screening):
    # a run identical to the previous one, with nobody in washout (so none ends soon)
    same = snapshots(screening)
    later_run = {
        p: {**s, "status": "eligible", "eligible_from": None} if s["status"] == WASHOUT else s
        for p, s in same.items()
    }
    changes = compare(later_run, later_run, {}, screening.as_of, PREVIOUS_RUN)
    section = changes_section(render(screening, changes))
    assert "Nothing new, changed or dropped" in section
    assert "<strong>0</strong> new, <strong>0</strong> changed, <strong>0</strong> dropped" in (
        section
    )


HOSTILE = "<script>alert('x')</script>"


def test_review_and_change_text_is_escaped(screening):
    patient = screening.candidates[0].result.patient
    other = screening.candidates[1].result.patient
    changes = Changes(
        previous={"id": 1, "as_of": "2026-06-01", "finished_at": f"2026-06-01{HOSTILE}"},
        new=[Change(patient, f"Eve {HOSTILE}", None, "eligible", f"first listed {HOSTILE}")],
        dropped=[Change(other, None, "eligible", f"excluded{HOSTILE}", f"because {HOSTILE}")],
        reviews={
            patient: ReviewState(
                Review(patient, "declined", f"note {HOSTILE}", f"Mallory {HOSTILE}", REVIEWED_AT)
            ),
            other: ReviewState(
                Review(other, "not-eligible", HOSTILE, "Bob", REVIEWED_AT),
                new_evidence=(f"lab {HOSTILE}",),
            ),
        },
    )
    page = render(screening, changes)
    assert len(re.findall(r"<script", page)) == 1  # only the page's own filter script
    escaped = "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;"
    rows = change_rows(page)
    assert rows[0]["why"] == f"first listed {HOSTILE}"
    assert rows[0]["why_html"] == f"first listed {escaped}"
    assert rows[1]["status"] == f"eligible → excluded{HOSTILE}"
    assert rows[1]["why"] == f"because {HOSTILE}"
    assert f"Eve {escaped}" in changes_section(page)
    assert f"2026-06-01{escaped}" in changes_section(page)
    table = candidate_rows(page)
    assert table[patient]["review"] == f"declined 2026-07-01 by Mallory {HOSTILE}"
    assert table[patient]["review_html"] == f"declined 2026-07-01 by Mallory {escaped}"
    assert (
        table[other]["review"]
        == f"not-eligible 2026-07-01 by Bob; new evidence since: lab {HOSTILE}"
    )
    assert (
        f"<strong>Review:</strong> declined 2026-07-01 by Mallory {escaped}" in cards(page)[patient]
    )
    assert f"Since the last run:</strong> new: first listed {escaped}" in cards(page)[patient]


def test_changes_and_reviews_print_values_plainly(later, changes):
    page = render(later, changes)
    section = text(changes_section(page))
    assert "85 IU/mL (reference: up to 30 IU/mL)" in section  # p74's new anti-dsDNA
    assert "[IU]" not in section and "reference –" not in section
    assert "[IU]" not in text(cards(page)[P74])
