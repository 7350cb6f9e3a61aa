"""The quality benchmark's real tables: every loader works offline and the matrix covers what it claims.

The table packages are in the test extra too, so ``make test`` runs this.
"""

from __future__ import annotations

import socket

import pytest

from benchmarks import tables


@pytest.fixture(scope="module")
def loaded():
    """Every table, loaded with the network switched off (a connection attempt raises)."""
    def refuse(*args, **kwargs):
        raise OSError("a benchmark table tried to use the network")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(socket.socket, "connect", refuse)
        mp.setattr(socket, "create_connection", refuse)
        return {name: tables.load(name) for name in tables.TABLES}


def test_every_table_loads_offline_as_a_label_and_features(loaded):
    assert len(loaded) >= 6
    for name, frame in loaded.items():
        assert "label" in frame.columns and frame["label"].notna().all(), name
        assert frame["label"].map(type).eq(str).all(), name
        assert frame.shape[1] > 1 and len(frame) > 100, name
        assert not set(tables.TABLES[name].drop) & set(frame.columns), name


def test_each_claim_holds_and_the_matrix_covers_every_requirement(loaded):
    covered = set()
    for name, frame in loaded.items():
        claims = tables.claims_hold(name, frame)
        assert all(claims.values()), (name, claims, tables.describe(frame))
        covered |= set(tables.TABLES[name].covers)
    assert covered == set(tables.REQUIREMENTS)


def test_weak_signal_tables_have_a_clean_ceiling_under_half(loaded):
    for name, spec in tables.TABLES.items():
        if "weak" in spec.covers:
            assert tables.ceiling_macro_f1(loaded[name]) < 0.5, name


def test_held_out_tables_exist_and_the_tuning_tables_still_cover_everything():
    assert len(tables.HELD_OUT) == 2 and set(tables.HELD_OUT) <= set(tables.TABLES)
    tuning = {c for n, t in tables.TABLES.items() if n not in tables.HELD_OUT for c in t.covers}
    assert tuning == set(tables.REQUIREMENTS)


def test_loading_is_deterministic(loaded):
    assert tables.load("diamonds").equals(loaded["diamonds"])
    assert len(loaded["diamonds"]) == 53940
