"""Lock ids are decoded exactly as Atlantis decodes them, and shown in Atlantis's formats."""

from __future__ import annotations

import json
import random
import string
from urllib.parse import quote_plus

import pytest

from sidecar.engine.model import Grant, Owner
from sidecar.proxy.atlantis_ids import (
    EscapeError,
    first_query_value,
    path_unescape,
    query_unescape,
    requested_id,
    split_id,
)
from sidecar.proxy.atlantis_json import go_json, go_time, lock_detail, merge
from tests.fake_atlantis import GoEscapeError, go_unescape, mux_query_var

LOCK_ID = "owner/repo/./default/"


def once(text: str) -> str:
    return quote_plus(text, safe="")


@pytest.mark.parametrize("encoded", [LOCK_ID, once(LOCK_ID), once(once(LOCK_ID))])
@pytest.mark.parametrize("route", ["query", "path"])
def test_raw_single_and_double_encoded_ids_name_the_same_lock(encoded: str, route: str) -> None:
    wanted = requested_id(f"id={encoded}", second_decode=route)
    assert wanted is not None
    assert (wanted.lock_id, wanted.key) == (LOCK_ID, "atlantis:" + LOCK_ID)


def test_plus_is_a_space_for_the_lock_page_but_not_for_delete() -> None:
    # GET /lock decodes twice with query rules; DELETE /locks the second time with path rules.
    lock_id = "acme/a+b/./default/"
    assert requested_id(f"id={once(lock_id)}", second_decode="query") == requested_id(
        "id=acme%2Fa%20b%2F.%2Fdefault%2F", second_decode="query"
    )
    delete = requested_id(f"id={once(lock_id)}", second_decode="path")
    assert delete is not None and delete.lock_id == lock_id


@pytest.mark.parametrize(
    ("query", "why"),
    [
        ("", "no id at all"),
        ("id=", "an empty id"),
        ("x=1", "another parameter only"),
        ("id=acme%2Fthree%2Fparts", "fewer than four slashes: not a v0.40+ id"),
        ("id=bad%25zz%2F%2F%2F%2F", "the second decode fails"),
        ("id=a%0Ab%2Fc%2Fd%2Fe%2Ff", "mux's `.*` does not match a newline"),
    ],
)
def test_ids_atlantis_would_not_find_are_left_to_atlantis(query: str, why: str) -> None:
    assert requested_id(query, second_decode="query") is None, why


def test_the_first_decodable_id_pair_wins_like_gorilla_mux() -> None:
    assert first_query_value("x=1;id=first&id=second", "id") == b"first"
    assert first_query_value("id=%zz&id=second", "id") == b"second"  # undecodable: skipped
    assert first_query_value("i%64=named-by-escape", "id") == b"named-by-escape"


def test_go_escape_errors_read_like_go() -> None:
    with pytest.raises(EscapeError, match='invalid URL escape "%zz"'):
        query_unescape(b"a%zzb")
    with pytest.raises(EscapeError, match='invalid URL escape "%4"'):
        path_unescape(b"a%4")


def test_sidecar_decoding_agrees_with_the_fake_atlantis_on_random_input() -> None:
    """Two independent Go-style decoders (the sidecar's, and the fake Atlantis's) must agree,
    or the sidecar would serve one lock while Atlantis serves another."""
    rng = random.Random(4)
    alphabet = string.ascii_letters + "/.+%-_~ 0123456789AaFf;&="
    for _ in range(5000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 24)))
        for query in (True, False):
            ours: str | None
            try:
                raw = query_unescape(text.encode()) if query else path_unescape(text.encode())
                ours = raw.decode("utf-8", "surrogateescape")
            except EscapeError:
                ours = None
            theirs: str | None
            try:
                theirs = go_unescape(text, query=query)
            except GoEscapeError:
                theirs = None
            assert ours == theirs, text
        mine = first_query_value(text, "id")
        decoded = None if mine is None else mine.decode("utf-8", "surrogateescape")
        # (The fake folds mux's "no newline" pattern rule in; the sidecar checks it later.)
        if decoded is not None and "\n" in decoded:
            decoded = None
        assert decoded == mux_query_var(text, "id"), text


def test_ids_split_by_the_holders_repo_else_owner_and_name() -> None:
    assert split_id("acme/infra/modules/vpc/default/vpc", "acme/infra") == split_id(
        "acme/infra/modules/vpc/default/vpc"
    )
    parts = split_id("group/sub/repo/envs/prod/prod/app", "group/sub/repo")
    assert (parts.repo, parts.path, parts.workspace, parts.project) == (
        "group/sub/repo",
        "envs/prod",
        "prod",
        "app",
    )
    # Without the holder's repo, a repo is taken to be `owner/name`.
    guess = split_id("group/sub/repo/./default/")
    assert (guess.repo, guess.path, guess.workspace, guess.project) == (
        "group/sub",
        "repo/.",
        "default",
        "",
    )


def test_times_are_written_like_go_rfc3339_nano() -> None:
    assert go_time(1_700_000_000.0) == "2023-11-14T22:13:20Z"
    assert go_time(1_700_000_000.25) == "2023-11-14T22:13:20.25Z"
    assert go_time(1_700_000_000.123456) == "2023-11-14T22:13:20.123456Z"


def test_json_is_written_like_go_encoding_json() -> None:
    assert go_json({"Locks": None}) == '{"Locks":null}'
    assert go_json({"a": "<b>&\u2028é"}) == '{"a":"\\u003cb\\u003e\\u0026\\u2028é"}'


def test_a_named_client_holding_an_atlantis_key_shows_as_its_user() -> None:
    grant = Grant(
        "atlantis:acme/infra/./default/", Owner("ci-job-4"), 3, 1_700_000_000.0, None, "r"
    )
    assert lock_detail(grant) == {
        "Name": "acme/infra/./default/",
        "ProjectName": "",
        "ProjectRepo": "acme/infra",
        "ProjectRepoPath": ".",
        "PullID": "",
        "PullURL": "",
        "User": "ci-job-4",
        "Workspace": "default",
        "Time": "2023-11-14T22:13:20Z",
    }


def test_merge_keeps_atlantis_bytes_when_it_adds_nothing() -> None:
    owner = Owner.pull_request("acme/infra", 3, "alice")
    grant = Grant("atlantis:acme/infra/./default/", owner, 1, 1_700_000_000.0, None, "r")
    body = json.dumps(
        {"Locks": [{"Name": "acme/infra/./default/", "ProjectRepo": "acme/infra", "PullID": "3"}]}
    ).encode()
    merged = merge(body + b"\n", [grant])
    assert merged.body is None and merged.divergences == ()
    with pytest.raises(ValueError, match="not an Atlantis lock listing"):
        merge(b'{"error":"boom"}', [grant])


def test_owner_json_without_url_still_loads() -> None:
    old = {"id": "acme/infra#3", "repo": "acme/infra", "pull": 3, "user": "alice"}
    assert Owner.from_json(old) == Owner.pull_request("acme/infra", 3, "alice")
    new = Owner.pull_request("acme/infra", 3, "alice", "https://github.com/acme/infra/pull/3")
    assert Owner.from_json(new.to_json()) == new
