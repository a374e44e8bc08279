import datetime as dt

import pytest

from dukungan.windows import may_append, window_state

WIB = dt.timezone(dt.timedelta(hours=7))


def at(*a):
    return dt.datetime(*a, tzinfo=WIB).astimezone(dt.timezone.utc)


def test_before_open(election):
    s = window_state(election, "paslon-09", at(2024, 5, 7, 23, 59, 59))
    assert not s.open and s.next_opens_at == at(2024, 5, 8)


def test_open_and_close_in_local_time(election):
    s = window_state(election, "paslon-09", at(2024, 5, 8, 0, 0))
    assert s.open and s.round == "penyerahan" and s.kind == "submission"
    assert s.closes_at == at(2024, 5, 12, 23, 59, 59) and s.extended_by is None
    assert window_state(election, "paslon-09", at(2024, 5, 12, 23, 59, 59)).open
    after = window_state(election, "paslon-09", at(2024, 5, 13, 0, 0))
    assert not after.open and after.next_opens_at == at(2024, 6, 20)


def test_correction_round(election):
    s = window_state(election, "paslon-09", at(2024, 6, 21, 12))
    assert s.open and s.kind == "correction" and s.round == "perbaikan"


def test_extension_for_one_tenant_only(election):
    t = at(2024, 5, 14, 10)
    assert not window_state(election, "paslon-09", t).open
    s = window_state(election, "paslon-01", t)
    assert s.open and s.closes_at == at(2024, 5, 15, 23, 59, 59)
    assert s.extended_by == "Surat KPU 707/PL.02.2-SD/05/2024"
    # During the original window the tenant's close already shows the extension.
    assert window_state(election, "paslon-01", at(2024, 5, 9)).closes_at == at(2024, 5, 15, 23, 59, 59)


def test_separate_reopening_extension(election):
    assert not window_state(election, "paslon-02", at(2024, 6, 1)).open
    s = window_state(election, "paslon-02", at(2024, 6, 5))
    assert s.open and s.round == "penyerahan" and s.extended_by.startswith("Putusan Bawaslu")


def test_grace_for_uploads_created_before_close(election):
    created = at(2024, 5, 12, 23, 58)
    assert may_append(election, "paslon-09", created, at(2024, 5, 13, 0, 9, 59)).allowed  # grace 600 s
    late = may_append(election, "paslon-09", created, at(2024, 5, 13, 0, 10, 0))
    assert not late.allowed and "grace" in late.reason
    assert not may_append(election, "paslon-09", at(2024, 5, 13, 0, 0, 1), at(2024, 5, 13, 0, 0, 2)).allowed
    ext = may_append(election, "paslon-01", created, at(2024, 5, 15, 12))
    assert ext.allowed and ext.deadline == at(2024, 5, 16, 0, 9, 59)


def test_other_time_zones(election):
    wit = election.__class__(**{**{f: getattr(election, f) for f in election.__struct_fields__},
                                "timezone": "Asia/Jayapura"})
    # 23:59:59 WIT is 21:59:59 WIB.
    assert window_state(wit, "x", at(2024, 5, 12, 21, 59, 59)).open
    assert not window_state(wit, "x", at(2024, 5, 12, 22, 0, 0)).open


def test_naive_now_is_refused(election):
    with pytest.raises(ValueError, match="timezone-aware"):
        window_state(election, "x", dt.datetime(2024, 5, 9))
