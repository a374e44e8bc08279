"""A commented example election, so that a new stack can judge lists from its first minute.

`unggah election example > election.toml` writes it. The submission window it declares opens
today and closes in five days, local time, so uploads are accepted while one tries it out;
a real election file copies the commission's dates instead. With `--codes`, an invented code
list is written beside it (dukungan.region.synthetic_code_list_text): enough to try the
stack, never to judge a real list, which needs the Kemendagri list the commission uses.
"""

from __future__ import annotations

import datetime as dt

SUBMISSION_DAYS = 5


def example_election(codes_path: str, today: dt.date, synthetic: bool) -> str:
    """The example TOML; `codes_path` is written as given (relative paths are read relative to
    the election file). `synthetic`: the code list is the invented one, and the file says so."""
    closes = today + dt.timedelta(days=SUBMISSION_DAYS - 1)
    version = ('"invented codes, for trying unggah out only"' if synthetic
               else '"Permendagri 58/2021 + Kepmendagri 050-145/2022"')
    return f'''# An election for unggah: what the gateway enforces (windows) and how supporter lists are
# judged (thresholds, code list, scans). Every key: docs/dukungan.md, "Election file".
# Start the stack with it:  unggah up --election election.toml
# Check a list offline:     unggah check daftar.xlsx --election election.toml

name = "Contoh: Pilwalkot 2024"
level = "walikota"              # gubernur | bupati | walikota
region_code = "19.71"           # PP for a governor's election, PP.KK otherwise
vote_date = {today + dt.timedelta(days=200)}
timezone = "Asia/Jakarta"       # Asia/Jakarta (WIB), Asia/Makassar (WITA), Asia/Jayapura (WIT)
dpt_base = 161413               # voters on the DPT the minimum is computed from
dpt_source = "DPT Pemilu 2024"
grace_seconds = 900             # an upload created before the close may go on this long after it
correction_multiplier = 2       # correction round: bring this many times the shortfall

[code_list]
# The Kemendagri region codes the NIK and KODE_DESA columns are checked against, relative to
# this file. {"These codes are INVENTED: replace them with the commission's list before real use."
             if synthetic else "Use the list the commission publishes for this election."}
path = "{codes_path}"
version = {version}

[scans]
max_bytes = 2097152             # per scan of a KTP-el or a signed statement
max_pages = 2

# The commission's windows, in local time (`timezone`), closes inclusive.
[[windows]]
name = "penyerahan"
kind = "submission"             # submission | correction
opens = {today}T00:00:00
closes = {closes}T23:59:59

# An extension the commission grants one pair, with the letter that grants it:
# [[extensions]]
# tenant = "paslon-01"
# round = "penyerahan"
# closes = {closes + dt.timedelta(days=3)}T23:59:59
# authority = "Surat KPU ..."
'''
