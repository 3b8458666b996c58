"""Benchmark: how many copies the trial cannot use pass the kept keys' bit set by chance.

    python bench/keybits.py [--keys 1e6 --keys 17e6 --keys 55e6] [--json out.json]

The store takes out of its runs only the unkept copies whose key's bit is set
(``fhir_cohort.store.KeyBits``); a copy that passes by chance is then matched exactly on
the key index, which costs a row, an index entry and a lookup. For each number of kept
keys (random 64-bit keys, as the store's salted hashes are), in this one script run:
the share of a million fresh keys that pass, with the bit set of a fixed 2**25 bits (the
store before it grew) and with the bit set as the store now sizes it (four times larger
while there is more than one key per ``BITS_PER_KEY`` bits, up to ``MOST_BITS``), with
its size and the time marking took. 55 million kept keys is the benchmark's shape at
about a million patients (15 % of 370 million resources).
"""

from __future__ import annotations

import argparse
import json
import random
import time
from array import array
from pathlib import Path

from fhir_cohort.store import BITS_PER_KEY, FIRST_BITS, MOST_BITS, KeyBits

CHUNK = 1 << 20  # keys made and marked at a time


def grown_size(keys: int) -> int:
    """The size the store's bit set reaches with ``keys`` kept keys.

    >>> grown_size(1), grown_size(2_100_000) == 4 * FIRST_BITS
    (33554432, True)
    """
    size = FIRST_BITS
    while keys * BITS_PER_KEY > size and size < MOST_BITS:
        size = min(4 * size, MOST_BITS)
    return size


def random_keys(rng: random.Random, count: int) -> array:
    return array("q", (rng.getrandbits(64) - (1 << 63) for _ in range(count)))


def pass_rate(bits: KeyBits, fresh: array) -> float:
    return len(bits.hits(fresh.tobytes())) / len(fresh)


def measure(keys: int, rng: random.Random, fresh: array) -> dict:
    fixed, grown = KeyBits(FIRST_BITS), KeyBits(grown_size(keys))
    marking = 0.0
    left = keys
    while left:
        chunk = random_keys(rng, min(CHUNK, left))
        fixed.mark(chunk)
        started = time.perf_counter()
        grown.mark(chunk)
        marking += time.perf_counter() - started
        left -= len(chunk)
    return {
        "kept_keys": keys,
        "fixed_mib": len(fixed.bits) / 2**20,
        "fixed_pass": pass_rate(fixed, fresh),
        "grown_mib": len(grown.bits) / 2**20,
        "grown_pass": pass_rate(grown, fresh),
        "marking_ns_per_key": marking / keys * 1e9,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", action="append", type=float, help="kept keys (repeat)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    rng = random.Random(12)
    fresh = random_keys(rng, 1_000_000)
    rows = []
    for count in [int(k) for k in (args.keys or [560_000, 2e6, 17e6, 55e6])]:
        row = measure(count, rng, fresh)
        rows.append(row)
        print(
            f"{count:>12,} kept keys: fixed {row['fixed_mib']:5.0f} MiB passes "
            f"{row['fixed_pass']:6.1%}; grown {row['grown_mib']:5.0f} MiB passes "
            f"{row['grown_pass']:6.2%} (marking {row['marking_ns_per_key']:.0f} ns a key)",
            flush=True,
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
