import json

from dukungan.cli import main
from dukungan.export import EXPORT_HEADER, verdicts_csv_text
from dukungan.generate import generate, write_csv
from dukungan.preflight import check_file, validate_file


def _setup(tmp_path, ctx, election_toml, rows: int):
    """An election file, a generated list of `rows` as CSV, and an empty scans folder."""
    e = tmp_path / "election.toml"
    e.write_text(election_toml, encoding="utf-8")
    g = generate(ctx, rows, seed=8)
    data = tmp_path / "list.csv"
    write_csv(data, g.rows)
    scans = tmp_path / "scans"
    scans.mkdir()
    return e, g, data, scans


def test_check_and_template(tmp_path, ctx, election_toml, capsys):
    e, g, data, scans = _setup(tmp_path, ctx, election_toml, 40)
    for nik in sorted(g.scans.ktp)[:10]:
        (scans / f"{nik}_ktp.jpg").write_bytes(b"\xff\xd8\xff\xe0")
    assert main(["check", str(data), "--election", str(e)]) == 0
    out = capsys.readouterr().out
    assert "memenuhi syarat" in out and "English" in out and "TIDAK diperiksa" in out
    assert main(["check", str(data), "--election", str(e), "--scans", str(scans), "--json",
                 "--export", str(tmp_path / "v.csv")]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["rows"] == len(g.rows) and report["scans_checked"] and report["reasons"]["NO_KTP"] > 0
    assert "verdicts" not in report
    exported = (tmp_path / "v.csv").read_text(encoding="utf-8-sig").splitlines()
    assert exported[0] == ",".join(EXPORT_HEADER) and len(exported) == len(g.rows) + 1
    bad = tmp_path / "bad.csv"
    bad.write_text("NIK,NAMA\n1,2\n", encoding="utf-8")
    assert main(["check", str(bad), "--election", str(e)]) == 1
    assert "TEMPLATE_INVALID" in capsys.readouterr().out
    assert main(["check", str(data), "--election", str(tmp_path / "missing.toml")]) == 2
    assert main(["template", str(tmp_path / "t.xlsx")]) == 0 and (tmp_path / "t.xlsx").exists()


def test_preflight_equals_server_path(tmp_path, ctx):
    g = generate(ctx, 50, seed=12, dup_rate=0.1)
    data = tmp_path / "l.csv"
    write_csv(data, g.rows)
    server = validate_file(data, ctx, scans=g.scans)
    report = check_file(data, ctx, scans=g.scans)
    assert report.verdicts.status == server.status and report.verdicts.reasons == server.reasons
    text = verdicts_csv_text(server.rows())
    assert "Ganda internal" in text and "same NIK twice" in text


def test_json_report_survives_a_scan_name_that_is_not_utf8(tmp_path, ctx, election_toml, capsys):
    import os
    e, g, data, scans = _setup(tmp_path, ctx, election_toml, 20)
    (scans / os.fsdecode(b"foto\xff.jpg")).write_bytes(b"\xff\xd8\xff\xe0")
    assert main(["check", str(data), "--election", str(e), "--scans", str(scans), "--json"]) in (0, 1)
    report = json.loads(capsys.readouterr().out)
    assert report["rows"] == len(g.rows)


def test_the_list_in_its_own_scans_folder_is_not_reported_as_a_bad_scan(tmp_path, ctx, election_toml, capsys):
    """Teams keep the list beside its scans (kirim/daftar.csv, kirim/<NIK>_ktp.jpg) and point
    --scans at that folder: the list being checked is not a scan."""
    e, g, _, _ = _setup(tmp_path, ctx, election_toml, 20)
    kirim = tmp_path / "kirim"
    kirim.mkdir()
    data = kirim / "daftar.csv"
    write_csv(data, g.rows)
    for nik in sorted(g.scans.ktp)[:3]:
        (kirim / f"{nik}_ktp.jpg").write_bytes(b"\xff\xd8\xff\xe0")
    assert main(["check", str(data), "--election", str(e), "--scans", str(kirim), "--json"]) in (0, 1)
    report = json.loads(capsys.readouterr().out)
    assert report["scans_checked"] and not any("daftar.csv" in p for p in report["scan_problems"])
