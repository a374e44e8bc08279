from dukungan.generate import generate, write_csv
from dukungan.preflight import validate_file
from dukungan.progress import progress, progress_of
from dukungan.rules import RowVerdict


def test_progress_counts_and_spread(ctx, tmp_path):
    g = generate(ctx, 300, seed=4, dup_rate=0.05)
    p = tmp_path / "a.csv"
    write_csv(p, g.rows)
    v = validate_file(p, ctx, scans=g.scans, other_pairs=g.other_pairs)
    pr = progress_of(v, ctx)
    ms_niks = {v.table.nik[i] for i in range(len(v)) if v.status[i] == "MS"}
    assert pr.ms == len(ms_niks)
    assert pr.bms == v.status.count("BMS") and pr.tms == v.status.count("TMS")
    assert pr.tms_by_reason["DUP_INTERNAL"] == len(g.traps["DUP_INTERNAL"])
    assert pr.bms_by_reason["PROHIBITED_OCCUPATION"] == 2
    assert pr.flags_by_reason["DUP_EXTERNAL"] == 1 and pr.ms_pending_external == 1
    assert sum(pr.ms_per_unit.values()) == pr.ms
    assert set(pr.ms_per_unit) == set(ctx.units)
    assert pr.min_support == 16_142 and pr.min_spread == ctx.thresholds.min_spread
    assert pr.shortfall == 16_142 - pr.ms
    assert pr.correction_required == 2 * pr.shortfall
    assert not pr.met


def test_spread_shortfall_and_met(ctx):
    units = ctx.units
    village = {u: next(v for v in sorted(ctx.region_villages) if v.startswith(u + ".")) for u in units}
    need = ctx.thresholds.min_spread
    rows = [RowVerdict(i, i + 2, f"{i:016d}", "X", village[units[i % (need - 1)]], "MS", ())
            for i in range(ctx.thresholds.min_support)]
    pr = progress(rows, ctx)
    assert pr.shortfall == 0 and pr.units_meeting == need - 1 and pr.spread_shortfall == 1 and not pr.met
    rows.append(RowVerdict(10**6, 0, "9" * 16, "Y", village[units[need - 1]], "MS", ()))
    pr = progress(rows, ctx)
    assert pr.met and pr.correction_required == 0
    # The same NIK twice across uploads counts once.
    assert progress(rows + [rows[0]], ctx).ms == pr.ms
