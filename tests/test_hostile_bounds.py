"""Hostile servers (issue 8), part 2: every answer and every wait is bounded.

Huge bodies and decompression bombs stop at a cap (streamed, never buffered
whole: the memory and disk they would cost are measured by
``bench/hostile_memory.py``); a server that drips bytes, stalls its headers or
keeps a run waiting is cut off by the per-request and per-run deadlines;
paging stops where the announced total says it must; a Bulk export still
running at ``--max-wait`` stops the run and is resumed by the next one. The
time bounds asserted are generous (tens of seconds against a 2 s deadline):
they catch "unbounded", not jitter.
"""

from __future__ import annotations

import functools
import json

import pytest
from hostile_servers import (
    P01,
    MiB,
    MiniFhir,
    bundle,
    candidate_search,
    gzip_of,
    path_ends,
    screen,
    serve,
)


@functools.cache
def json_bomb(size: int) -> bytes:
    """A searchset Bundle, valid JSON, padded with ``size`` bytes of spaces, gzipped."""
    return gzip_of(b'{"resourceType":"Bundle","type":"searchset","entry":[', b" ", size, b"]}")


def folder_bytes(folder) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


# -- size ------------------------------------------------------------------------------
def test_a_body_larger_than_the_cap_is_refused_while_streaming(tmp_path):
    """80 MB of valid JSON, streamed: stopped at the 64 MB default, exit 3 (before: read
    whole, parsed, used)."""
    head = b'{"resourceType":"Bundle","type":"searchset","entry":['
    body = [head, *[b" " * MiB] * 80, b"]}"]
    scenario = MiniFhir([P01]).but(candidate_search(), lambda call: call.stream(iter(body)))
    with serve(scenario) as server:
        run = screen(tmp_path, server.base)
    assert run.code == 3
    assert "larger than 64 MB (--max-body-mb)" in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1


def test_a_gzip_bomb_answer_is_refused_after_decoding(tmp_path):
    """100 KB of gzip inflating to 100 MB: counted after decoding, stopped at 64 MB."""
    bomb = json_bomb(100 * MiB)
    assert len(bomb) < 200_000
    with serve(MiniFhir([P01]).but(candidate_search(), lambda call: call.gzipped(bomb))) as server:
        run = screen(tmp_path, server.base)
    assert run.code == 3
    assert "larger than 64 MB" in run.stderr


def test_a_bulk_file_bomb_stops_at_the_ratio_guard_and_leaves_no_file(tmp_path):
    """A Bulk file of 200 KB of gzip inflating to 200 MB (before: all of it written)."""
    bomb = gzip_of(b"", b"\n", 200 * MiB, b"")
    scenario = MiniFhir([P01]).but(
        path_ends("/files/Condition"),
        lambda call: call.gzipped(bomb, content_type="application/fhir+ndjson"),
    )
    with serve(scenario) as server:
        run = screen(tmp_path, server.base, "--bulk")
    assert run.code == 3
    assert "inflates to more than 200 times" in run.stderr
    assert folder_bytes(tmp_path) < 2 * MiB  # the partial file is gone
    assert not list(tmp_path.rglob("*.part"))


def test_a_bulk_file_past_its_size_cap_is_refused(tmp_path):
    scenario = MiniFhir([P01]).but(
        path_ends("/files/Condition"), lambda call: call.stream(iter([b"x" * MiB] * 3))
    )
    with serve(scenario) as server:
        run = screen(tmp_path, server.base, "--bulk", "--max-file-gb", "0.001")
    assert run.code == 3
    assert "larger than 0.001 GB (--max-file-gb)" in run.stderr
    assert folder_bytes(tmp_path) < 2 * MiB


# -- time ------------------------------------------------------------------------------
@pytest.mark.parametrize("before_headers", [False, True], ids=["body", "headers"])
def test_a_dripping_server_is_cut_off_at_the_request_deadline(tmp_path, before_headers):
    """A byte every 0.2 s never trips a read timeout; the 2 s total deadline ends each try
    (before: one try lasted as long as the server kept dripping)."""
    scenario = MiniFhir([P01]).but(
        candidate_search(), lambda call: call.drip(every=0.2, before_headers=before_headers)
    )
    with serve(scenario) as server:
        run = screen(tmp_path, server.base, "--timeout", "2", "--max-retries", "1")
    assert run.code == 3
    assert "no answer after 2 tries (no complete answer within the deadline" in run.stderr
    assert run.seconds < 30


def test_the_run_deadline_bounds_a_request_and_the_waits(tmp_path):
    with serve(MiniFhir([P01]).but(candidate_search(), lambda call: call.drip())) as server:
        run = screen(tmp_path, server.base, "--max-run-time", "3", "--max-retries", "5")
    assert run.code == 3
    assert "--max-run-time 3 s" in run.stderr
    assert run.seconds < 30


def next_link_forever(fhir: MiniFhir, total: int | None):
    """Candidate searches whose every page has one entry and a fresh next link."""
    first = fhir.search("Condition", {"_elements": "subject"})[:1]

    def page(call):
        number = int(call.params.get("page", 0)) + 1
        link = f"{call.server.base}/Condition?page={number}"
        call.json(bundle(first, total=total, next_url=link))

    return fhir.but(lambda call: candidate_search()(call) or "page" in call.params, page)


@pytest.mark.parametrize(
    ("total", "args", "most"), [(2, (), 3), (None, ("--max-pages", "5"), 5)], ids=["total", "none"]
)
def test_paging_stops_where_the_total_says(tmp_path, total, args, most):
    """Before: a fresh next link on every page was followed for ever."""
    fhir = MiniFhir([P01])
    with serve(next_link_forever(fhir, total), max_requests=120) as server:
        run = screen(tmp_path, server.base, *args)
    pages = [s for s in server.seen if "page=" in s.path]
    # two candidate searches on Condition: each follows at most `most` - 1 next links
    assert 0 < len(pages) <= 2 * (most - 1)
    assert server.overflow == 0
    assert run.code == 4, run.stderr
    assert run.quality()["incomplete-search"] == 2
    assert "paging stopped" in run.quality_text()


def test_an_export_still_running_at_max_wait_stops_and_is_resumed(tmp_path):
    """Before: a status URL answering 202 was polled for an hour, whatever --max-wait said."""
    running = {"yes": True}
    scenario = MiniFhir([P01]).but(
        lambda call: call.path.endswith("/status/1") and running["yes"],
        lambda call: call.send(202, headers={"Retry-After": "1", "X-Progress": "working"}),
    )
    with serve(scenario, max_requests=60) as server:
        run = screen(tmp_path, server.base, "--bulk", "--max-wait", "3")
        state = json.loads(next(tmp_path.rglob(".bulk-state.json")).read_text())
        running["yes"] = False
        resumed = screen(tmp_path, server.base, "--bulk", "--max-wait", "3")
    assert run.code == 3
    assert "still running after 3 s (--max-wait)" in run.stderr
    assert "resume" in run.stderr
    assert run.seconds < 20
    assert 2 <= server.paths().count("/fhir/status/1") <= 6
    assert state["job"]["status_url"].endswith("/status/1")
    assert resumed.code == 0, resumed.stderr
    assert resumed.statuses() == {P01: "eligible"}
    assert server.paths().count("/fhir/$export") == 1  # the second run did not export again


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("--timeout", "inf"),
        ("--max-run-time", "0"),
        ("--max-body-mb", "nan"),
        ("--max-pages", "-1"),
    ],
)
def test_a_limit_must_be_a_finite_number_above_zero(tmp_path, option, value):
    with serve(MiniFhir([P01])) as server:
        run = screen(tmp_path, server.base, option, value)
    assert run.code == 2
    assert f"{option} must be a number more than 0" in run.stderr
    assert server.seen == []
