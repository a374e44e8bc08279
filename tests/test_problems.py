"""The problem catalogue holds every outcome the buffer's scripts can return: each refusal is
declared once (gateway/problems.py), each APPEND outcome has its answer (gateway/tus.py
APPEND_REFUSALS), and APPEND's arguments are named in one place that the script follows."""

from __future__ import annotations

import re
from typing import get_args

import orjson
import pytest

from buffer import scripts
from buffer.store import Appended, AppendOutcome, CreateOutcome, TerminateOutcome
from gateway import problems
from gateway.tus import APPEND_REFUSALS, append_refusal


def returned(script: str) -> set[str]:
    """Every outcome a Lua script returns: the first element of each `return {'...'`."""
    return set(re.findall(r"return \{'([a-z_]+)'", script))


@pytest.mark.parametrize("script,outcome", [(scripts.CREATE, CreateOutcome), (scripts.APPEND, AppendOutcome),
                                            (scripts.TERMINATE, TerminateOutcome)],
                         ids=["CREATE", "APPEND", "TERMINATE"])
def test_every_outcome_a_write_script_returns_is_one_its_struct_names_and_no_other(script, outcome):
    assert returned(script) == set(get_args(outcome))


def test_every_append_outcome_but_ok_has_an_entry_in_the_refusal_table():
    assert set(APPEND_REFUSALS) == set(get_args(AppendOutcome)) - {"ok"}


def test_each_kind_of_refusal_is_declared_once_with_its_own_reason():
    kinds = [v for k, v in vars(problems).items() if k.startswith("Err")]
    assert len({k.reason for k in kinds}) == len(kinds)
    assert all(400 <= k.status < 600 and k.title for k in kinds)


@pytest.mark.parametrize("outcome", sorted(set(get_args(AppendOutcome)) - {"ok"}))
def test_each_append_refusal_is_problem_json_with_its_tables_status_and_reason(outcome):
    kind, _ = APPEND_REFUSALS[outcome]
    resp = append_refusal(Appended(outcome, 7, detail="failed"), "0-" + "a" * 32)
    body = orjson.loads(resp.body)
    assert (resp.status, body["reason"], body["title"]) == (kind.status, kind.reason, kind.title)
    assert resp.content_type == "application/problem+json" and resp.headers["Unggah-Reason"] == kind.reason
    assert "{" not in body["detail"], "every placeholder of the detail was filled"


@pytest.mark.parametrize("res,status,reason,header", [
    (Appended("conflict", 5), 409, "offset-mismatch", ("Upload-Offset", "5")),
    (Appended("full", 9), 503, "buffer-full", ("Upload-Offset", "9")),
    (Appended("revoked"), 401, "unauthorized", ("WWW-Authenticate", 'Bearer realm="unggah"')),
    (Appended("closed", detail="terminated"), 404, "upload-not-found", None),
    (Appended("closed", detail="failed"), 403, "upload-failed", None),
])
def test_refusals_carry_what_the_client_needs_to_go_on(res, status, reason, header):
    resp = append_refusal(res, "0-x")
    assert (resp.status, resp.headers["Unggah-Reason"]) == (status, reason)
    if header is not None:
        assert resp.headers[header[0]] == header[1]
    if reason == "buffer-full":
        assert int(resp.headers["Retry-After"]) >= 2


def test_the_append_scripts_header_names_its_arguments_as_the_builder_does():
    header = next(line for line in scripts.APPEND.splitlines() if line.startswith("-- ARGV:"))
    assert tuple(header.removeprefix("-- ARGV:").split()) == scripts.APPEND_ARGV
    used = {int(n) for n in re.findall(r"ARGV\[(\d+)\]", scripts.APPEND)}
    assert max(used) == len(scripts.APPEND_ARGV), "every named argument is read, and no unnamed one"
    assert f"for i = {len(scripts.APPEND_ARGV) + 1}, #ARGV" in scripts.APPEND, "the pieces follow the names"
    named = dict.fromkeys(scripts.APPEND_ARGV, "")
    assert scripts.append_argv([(1, b"x")], **named)[len(scripts.APPEND_ARGV):] == [1, b"x"]
    with pytest.raises(TypeError, match="unknown"):
        scripts.append_argv([], **named, extra=1)
    with pytest.raises(TypeError, match="missing"):
        scripts.append_argv([], **{k: v for k, v in named.items() if k != "actor"})
