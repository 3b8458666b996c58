"""The listed candidates kept on disk (fhir_cohort.listing): ranked as rank_terms ranks
them, read back the same whichever way the outputs read them, and removed after."""

from __future__ import annotations

import dataclasses
import gc
import random
from datetime import date

import pytest
from conftest import ROOT

from fhir_cohort.changes import snapshot
from fhir_cohort.criteria.language import load
from fhir_cohort.criteria.rank_terms import rank
from fhir_cohort.criteria.results import NOT_A_CANDIDATE
from fhir_cohort.engines.embedded import screen
from fhir_cohort.listing import (
    Header,
    Listing,
    candidate_dict,
    entries,
    headers,
    picked,
    snapshots,
)
from fhir_cohort.sources.files import FileSource

AS_OF = date(2026, 6, 30)


@pytest.fixture(scope="module", params=["misle", "surpass2"])
def screened(request):
    """Each bundled cohort screened for its trial: a listing, and its results."""
    trial = load(request.param)
    cohort = ROOT / "fixtures" / f"{request.param}-cohort"
    screening = screen([FileSource(cohort)], trial, AS_OF)
    assert isinstance(screening.candidates, Listing)
    return trial, screening.candidates, [c.result for c in screening.candidates]


def test_a_listing_ranks_as_rank_terms_ranks_in_any_order_of_arrival(screened, tmp_path):
    trial, _, results = screened
    expected = rank(results, trial)
    assert len({c.result.status for c in expected}) >= 3  # washouts, reviews, exclusions
    for seed in range(3):
        arrived = results[:]
        random.Random(seed).shuffle(arrived)
        listing = Listing(trial, tmp_path)
        for result in arrived:
            listing.add(result)
        got = list(listing.ranked())
        assert [(c.rank, c.score, c.result) for c in got] == [
            (c.rank, c.score, c.result) for c in expected
        ]


def test_every_way_of_reading_a_listing_gives_what_the_ranked_list_gives(screened):
    trial, listing, results = screened
    ranked = rank(results, trial)
    assert len(listing) == len(ranked) and bool(listing)
    assert (
        list(headers(listing))
        == list(headers(ranked))
        == [Header(c.rank, c.result.patient, c.result.status, c.result.doubted) for c in ranked]
    )
    assert (
        list(entries(listing))
        == list(entries(ranked))
        == [(c.result.patient, snapshot(c), candidate_dict(c)) for c in ranked]
    )
    odd = {c.result.patient for c in ranked[::2]}
    assert list(picked(listing, odd.__contains__)) == ranked[::2]
    assert list(picked(ranked, odd.__contains__)) == ranked[::2]
    assert listing[0] == ranked[0] and listing[-1] == ranked[-1] and listing[1:3] == ranked[1:3]
    with pytest.raises(IndexError):
        listing[len(ranked)]


def test_a_listings_snapshots_are_a_mapping_read_as_asked(screened):
    trial, listing, results = screened
    ranked = rank(results, trial)
    found = snapshots(listing)
    expected = {c.result.patient: snapshot(c) for c in ranked}
    assert list(found.items()) == list(expected.items())  # in rank order
    assert list(found) == list(expected) and len(found) == len(expected)
    first = ranked[0].result.patient
    assert found[first] == expected[first] and found.get("nobody") is None
    with pytest.raises(KeyError):
        found["nobody"]


def test_a_listing_removes_its_folder_when_closed_or_collected(tmp_path):
    trial = load("misle")
    closed = Listing(trial, tmp_path)
    collected = Listing(trial, tmp_path)
    assert len(list(tmp_path.iterdir())) == 2
    closed.close()
    assert len(list(tmp_path.iterdir())) == 1
    del collected
    gc.collect()
    assert list(tmp_path.iterdir()) == []


def test_only_listed_statuses_are_listed(screened, tmp_path):
    trial, _, results = screened
    listing = Listing(trial, tmp_path)
    listing.add(dataclasses.replace(results[0], status=NOT_A_CANDIDATE))
    listing.add(results[0])
    assert len(listing.ranked()) == 1 and listing[0].result == results[0]
    with pytest.raises(RuntimeError):  # ranks are given once
        listing.add(results[1])


def test_listings_detached_in_workers_and_absorbed_rank_as_one(screened, tmp_path):
    """A worker's listing, detached, is absorbed by the run's: the shares' candidates
    rank together as one listing of them all would, and the shares' files are gone."""
    trial, _, results = screened
    (tmp_path / "scratch").mkdir()
    shares = [Listing(trial, tmp_path / "scratch") for _ in range(3)]
    for i, result in enumerate(results):
        shares[i % 3].add(result)
    paths = [share.detach() for share in shares]
    whole = Listing(trial, tmp_path)
    for path in paths:
        whole.absorb(path)
    assert [(c.rank, c.score, c.result) for c in whole.ranked()] == [
        (c.rank, c.score, c.result) for c in rank(results, trial)
    ]
    assert list((tmp_path / "scratch").iterdir()) == []
    with pytest.raises(RuntimeError):  # a ranked listing is not handed on
        whole.detach()
