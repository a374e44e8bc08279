"""The rehearsal's verdict, judged from a run's files without running one (loadtest/report.py)."""

from __future__ import annotations

import json
from pathlib import Path

from loadtest import report


def _file(name: str, url: str, outcome: str, **kw) -> dict:
    f = {"pair": "pair-00", "kind": "scan", "name": name, "size": 1000, "sha256": "0" * 64, "operator": 0,
         "client": "tus-js-client", "checksum": False, "first_attempt": 1.0, "created_at": 1.1,
         "completed_at": 2.0 if outcome == "complete" else 0.0, "url": url, "acked": 1000 if url else 0,
         "outcome": outcome, "abandoned": "", "retries": 0, "acked_at_retry": 0, "refused_reason": "",
         "attempts": 1, "refusals": {}, "errors": {}, "resumes": 0, "cuts": 0, "appends_after_close": 0}
    f.update(kw)
    return f


def _run(out: Path, files: list[dict]) -> dict:
    out.mkdir()
    params = {"scenario": "deadline-rush", "start_at": 0.0, "close_at": 100.0, "end_at": 10.0, "pairs": 1,
              "operators": 1, "rows": 10, "rows_per_list": 10, "row_bytes": 100, "scans": 2, "scan_bytes": 1000,
              "chunk": 1024, "surge": 1.0}
    (out / "journal.json").write_text(json.dumps({
        "params": params, "files": files, "counts": {},
        "pairs": [{"pair": "pair-00", "planned_files": len(files), "planned_bytes": 1000 * len(files),
                   "not_started_files": 0}]}))
    stored = [f["url"] for f in files if f["outcome"] == "complete"]
    (out / "verification.json").write_text(json.dumps({
        "ran": True, "passed": True, "lost_bytes": 0, "acknowledged_complete": len(stored),
        "verified_stored": len(stored), "unfinished_checked": 0, "unfinished_intact": True, "regressed_bytes": 0,
        "states": {u: "stored" for u in stored}}))
    (out / "run.json").write_text(json.dumps(params))
    return report.build(out)


def test_one_upload_abandoned_by_a_tus_js_client_operator_fails_the_verdict_and_is_named(tmp_path):
    why = "upload abandoned after 4 retries: 503 buffer-full"
    s = _run(tmp_path / "out", [_file("a", "http://x/files/a", "complete"),
                                _file("b", "http://x/files/b", "abandoned", abandoned=why)])
    assert s["verdict"]["ok"] is False
    assert "1 uploads abandoned" in s["verdict"]["line"] and why in s["verdict"]["line"]
    assert s["pairs"][0]["abandoned"] == 1 and s["pairs"][0]["abandoned_symptoms"] == {why: 1}
    assert s["clients"]["tus-js-client"]["abandoned"] == 1
    assert why in report.render_text(s)


def test_the_same_run_without_the_abandoned_upload_has_no_abandonment_against_it(tmp_path):
    s = _run(tmp_path / "out", [_file("a", "http://x/files/a", "complete")])
    assert "0 uploads abandoned" in s["verdict"]["line"]
    # (This journal has no fault in it, which the verdict also says; nothing else.)
    assert [r for r in s["verdict"]["reasons"] if not r.startswith("the fault did not happen")] == []
