"""The embedded results store: what the validator writes is what it reads back and counts."""

from __future__ import annotations

from dukungan.progress import tally
from stores.results import ACCEPTED, FileRecord, RowColumns, SQLiteResults

MS, BMS, TMS = "MS", "BMS", "TMS"


def _rows(niks, status, reasons, units):
    n = len(niks)
    return RowColumns(list(range(2, n + 2)), niks, [f"NAMA {k}" for k in niks], units, status, reasons,
                      [f"fp{k}" for k in niks])


def _store(tmp_path):
    store = SQLiteResults(tmp_path / "results.sqlite")
    with store.write() as w:
        for uid in ("u1", "u2", "o1"):
            w.add_file(FileRecord(upload_id=uid, tenant="other" if uid == "o1" else "t", kind="list",
                                  filename=f"{uid}.csv", status=ACCEPTED))
        first = w.add_rows("u1", "t", "penyerahan", _rows(
            ["1", "2", "3", "3", "4", "5"], [MS, BMS, MS, TMS, MS, TMS],
            [(), ("NO_KTP",), ("DATE_FROM_SPREADSHEET",), ("DUP_INTERNAL",), ("DUP_EXTERNAL",), ("UNDERAGE",)],
            ["3171010001", "3171010002", "3172010001", "3172010001", "3173010001", "3171010001"]))
        second = w.add_rows("u2", "t", "perbaikan", _rows(
            ["2", "6", "1"], [MS, MS, TMS], [(), ("DUP_EXTERNAL", "DATE_FROM_SPREADSHEET"), ("DUP_INTERNAL",)],
            ["3174010001", "3171010009", "3175010001"]))
        # The BMS row of NIK 2 is corrected by the second upload: superseded, not counted.
        w.link([(first[1], second[0], "correction", True)])
        w.add_rows("o1", "other", "penyerahan", _rows(["1", "7"], [MS, MS], [(), ()], ["3171010001", "3171010001"]))
    return store, first, second


def test_row_ids_returned_by_add_rows_are_the_ids_stored(tmp_path):
    store, first, second = _store(tmp_path)
    stored = dict(store.con.execute("SELECT upload_id || ':' || idx, id FROM rows"))
    assert {f"u1:{i}": first[i] for i in range(6)} | {f"u2:{i}": second[i] for i in range(3)} == \
        {k: v for k, v in stored.items() if not k.startswith("o1")}


def test_the_tally_counted_in_sqlite_equals_dukungans_tally_of_the_current_rows(tmp_path):
    store, _, _ = _store(tmp_path)
    with store.write() as w:
        for cut in (5, 8):
            expected = tally(list(w.current_rows("t")), cut)
            assert w.tally("t", cut) == expected
            assert expected.pending == 2 and sum(expected.counted.values()) == 5  # NIKs 1, 2, 3, 4, 6
        assert w.tally("nobody", 5) == tally([], 5)


def test_rows_are_found_by_nik_in_arrival_order_for_one_tenant_or_all(tmp_path):
    store, first, second = _store(tmp_path)
    with store.write() as w:
        ids = lambda got: [(row.id, tenant) for row, tenant in got]  # noqa: E731
        # NIK 1: an MS row of u1, a TMS row of u2, an MS row of the other pair; none superseded.
        assert ids(w.rows_of(None, ["1"])) == [(first[0], "t"), (second[2], "t"), (ids(w.rows_of("other", ["1"]))[0])]
        assert ids(w.rows_of("t", ["1"])) == [(first[0], "t"), (second[2], "t")]
        assert ids(w.rows_of("t", ["2"])) == [(second[0], "t")]  # the BMS row of u1 was superseded
        assert w.rows_of("t", ["7"]) == [] and ids(w.rows_of(None, ["7"]))[0][1] == "other"
        assert w.counted_elsewhere("t") == {"1", "7"}
        assert w.counted_elsewhere("other") == {"1", "3", "4", "6", "2"}

