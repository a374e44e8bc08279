import pytest

from dukungan.election import ElectionError, load_election, parse_election


def test_loads_and_resolves_relative_paths(tmp_path, election_toml):
    text = election_toml.replace("[code_list]\npath = ", "[code_list]\nnik_prefix_paths = [\"old.csv\"]\npath = ")
    p = tmp_path / "e.toml"
    p.write_text(text, encoding="utf-8")
    e = load_election(p)
    assert e.level == "walikota" and e.correction_multiplier == 2 and e.grace_seconds == 600
    assert e.code_list.nik_prefix_paths == [str(tmp_path / "old.csv")]
    assert e.extensions[0].authority.startswith("Surat KPU")


@pytest.mark.parametrize("old,new,key", [
    ('dpt_base = 161413', 'dpt_base = "banyak"', "dpt_base"),
    ('timezone = "Asia/Jakarta"', 'timezone = "WIB"', "timezone"),
    ('region_code = "19.71"', 'region_code = "19.01"', "region_code"),
    ('level = "walikota"', 'level = "presiden"', "level"),
    ('closes = 2024-05-12T23:59:59', 'closes = 2024-05-01T23:59:59', "windows[0].closes"),
    ('round = "penyerahan"\nopens', 'round = "tahap-3"\nopens', "extensions[1].round"),
    ('kind = "correction"', 'kind = "koreksi"', "windows[1].kind"),
    ('grace_seconds = 600', 'grace_seconds = 600\nunknown_key = 1', "unknown_key"),
])
def test_errors_name_the_key(election_toml, old, new, key):
    assert old in election_toml
    with pytest.raises(ElectionError) as e:
        parse_election(election_toml.replace(old, new, 1), source="e.toml")
    assert key in str(e.value) and "e.toml" in str(e.value)


def test_missing_key(election_toml):
    with pytest.raises(ElectionError, match="vote_date"):
        parse_election(election_toml.replace("vote_date = 2024-11-27\n", ""))


def test_not_toml():
    with pytest.raises(ElectionError, match="not valid TOML"):
        parse_election("level = ")
