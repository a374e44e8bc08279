"""Occupations barred from supporting a candidate: TNI, Polri, ASN/PNS, election organisers, village officials.

Retired people may support ("purnawirawan", "pensiunan"), so a retirement
word anywhere in the cell clears it. Matching is on whole words of the
upper-cased text, so "PNS" matches "GURU PNS" but not "PNSX".
"""

from __future__ import annotations

import re

_WORD = re.compile(r"[A-Z0-9]+")

RETIRED_WORDS = frozenset({"PURNAWIRAWAN", "PURN", "PENSIUNAN", "PENSIUN", "RETIRED", "MANTAN", "EX", "PEPABRI"})
BARRED_WORDS = frozenset({
    "TNI", "ABRI", "TENTARA", "PRAJURIT", "POLRI", "POLISI", "KEPOLISIAN", "BRIMOB", "POLWAN",
    "ASN", "PNS", "PPPK", "KPU", "BAWASLU", "PANWASLU", "PANWASLIH", "PANWASCAM", "PPK", "PPS", "KPPS",
    "PANTARLIH", "KADES", "SEKDES", "KAUR", "KASI",
})
BARRED_PHRASES = (
    ("PEGAWAI", "NEGERI"), ("APARATUR", "SIPIL"), ("ANGKATAN", "DARAT"), ("ANGKATAN", "LAUT"),
    ("ANGKATAN", "UDARA"), ("PENYELENGGARA", "PEMILU"), ("PENYELENGGARA", "PEMILIHAN"),
    ("PERANGKAT", "DESA"), ("KEPALA", "DESA"), ("SEKRETARIS", "DESA"), ("KEPALA", "DUSUN"),
    ("PENGAWAS", "PEMILU"), ("PENGAWAS", "KELURAHAN"), ("PENGAWAS", "DESA"),
)


def is_prohibited(occupation: str) -> bool:
    words = _WORD.findall(occupation.upper())
    if not words or RETIRED_WORDS.intersection(words):
        return False
    if BARRED_WORDS.intersection(words):
        return True
    pairs = set(zip(words, words[1:]))
    return any(p in pairs for p in BARRED_PHRASES)
