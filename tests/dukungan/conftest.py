"""Shared fixtures: a real Kemendagri list when the shared folder exists, generated codes otherwise."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from dukungan.election import example_toml, parse_election
from dukungan.region import CodeList, load_code_list, parse_code_list, synthetic_code_list_text
from dukungan.rules import RuleContext, prepare

SHARED = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
LIST_2022 = SHARED / "wilayah-kepmendagri-2022.csv"
LIST_2025 = SHARED / "wilayah-kepmendagri-2025.csv"

# Pangkalpinang's 2024 rounds, with one extension by letter and one by a Bawaslu ruling.
WINDOWS = [{"name": "penyerahan", "kind": "submission",
            "opens": dt.datetime(2024, 5, 8), "closes": dt.datetime(2024, 5, 12, 23, 59, 59)},
           {"name": "perbaikan", "kind": "correction",
            "opens": dt.datetime(2024, 6, 20), "closes": dt.datetime(2024, 6, 22, 23, 59, 59)}]
EXTENSIONS = [{"tenant": "paslon-01", "round": "penyerahan", "closes": dt.datetime(2024, 5, 15, 23, 59, 59),
               "authority": "Surat KPU 707/PL.02.2-SD/05/2024"},
              {"tenant": "paslon-02", "round": "penyerahan", "opens": dt.datetime(2024, 6, 4),
               "closes": dt.datetime(2024, 6, 6, 23, 59, 59), "authority": "Putusan Bawaslu (3x24 jam)"}]


@pytest.fixture(scope="session")
def list_2022() -> Path | None:
    return LIST_2022 if LIST_2022.exists() else None


@pytest.fixture(scope="session")
def code_list_path(tmp_path_factory) -> Path:
    if LIST_2022.exists():
        return LIST_2022
    p = tmp_path_factory.mktemp("codes") / "synthetic.csv"
    p.write_text(synthetic_code_list_text(), encoding="utf-8")
    return p


@pytest.fixture(scope="session")
def codes(code_list_path) -> CodeList:
    return load_code_list(code_list_path, "test-list")


@pytest.fixture(scope="session")
def election_toml(code_list_path) -> str:
    return example_toml(name="Pilwalkot Pangkalpinang 2024", dpt_base=161413, dpt_source="DPT Pemilu 2024",
                        code_list={"path": str(code_list_path).replace("\\", "/"), "version": "test-list"},
                        windows=WINDOWS, extensions=EXTENSIONS)


@pytest.fixture(scope="session")
def election(election_toml):
    return parse_election(election_toml)


@pytest.fixture(scope="session")
def ctx(election, codes) -> RuleContext:
    extra = [load_code_list(LIST_2025)] if LIST_2025.exists() else []
    return prepare(election, codes=codes, prefix_lists=extra)


@pytest.fixture(scope="session")
def synthetic_ctx(election) -> RuleContext:
    """Always generated codes, so the suite exercises that path even where the shared folder exists."""
    return prepare(election, codes=parse_code_list(synthetic_code_list_text(), "synthetic"), prefix_lists=[])
