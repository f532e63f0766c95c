"""The fair_share overflow policy: the owner with the most waiting requests gives way."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import pluggy
import pytest
from sidecar.engine.model import Owner, Priority, Request
from sidecar.engine.policies import OverflowPolicy
from sidecar.plugin.registry import Registry

import atlantis_sidecar_fair_share
from atlantis_sidecar_fair_share import POLICY_NAME, FairShare

_ids = itertools.count(1)


def req(owner: str, at: float, *, seq: int = 0, priority: Priority = Priority.NORMAL) -> Request:
    """A waiting request of `owner`, enqueued at `at`; its id says whose and when, for messages."""
    return Request(
        id=f"{owner}-{at:g}-{next(_ids)}",
        keys=("k",),
        owner=Owner(owner),
        priority=priority,
        enqueued_at=at,
        score=at,
        deadline=at + 300,
        seq=seq,
    )


def choose(incoming: Request, waiting: list[Request]) -> str:
    return FairShare().choose_victim(incoming, waiting)


def test_newest_request_of_the_heaviest_owner_is_evicted_for_a_lighter_newcomer() -> None:
    g1, g2, m1 = req("greedy", 1), req("greedy", 2), req("modest", 3)
    assert choose(req("other", 4), [g1, g2, m1]) == g2.id


def test_newcomer_is_rejected_when_its_owner_is_the_heaviest() -> None:
    waiting = [req("greedy", 1), req("greedy", 2), req("modest", 3)]
    incoming = req("greedy", 4)
    assert choose(incoming, waiting) == incoming.id


def test_newcomer_is_rejected_when_counting_it_ties_its_owner_with_the_heaviest() -> None:
    waiting = [req("greedy", 1), req("greedy", 2), req("modest", 3)]
    incoming = req("modest", 4)  # modest 2 (with the newcomer), greedy 2
    assert choose(incoming, waiting) == incoming.id


def test_newcomer_of_a_new_owner_is_rejected_when_everyone_has_one_place() -> None:
    waiting = [req("a", 1), req("b", 2), req("c", 3)]
    incoming = req("d", 4)
    assert choose(incoming, waiting) == incoming.id


def test_newest_request_among_owners_tied_for_heaviest_is_evicted() -> None:
    a1, b1, b2, a2, c1 = req("a", 1), req("b", 2), req("b", 3), req("a", 4), req("c", 5)
    assert choose(req("d", 6), [a1, b1, b2, a2, c1]) == a2.id
    assert choose(req("d", 6), [a1, b1, a2, b2, c1]) == a2.id  # order of the list is irrelevant


def test_newest_is_decided_by_seq_when_requests_arrived_in_the_same_instant() -> None:
    first, second = req("greedy", 5, seq=7), req("greedy", 5, seq=8)
    assert choose(req("other", 6), [second, first]) == second.id


def test_priority_does_not_protect_the_heaviest_owner() -> None:
    g1 = req("greedy", 1, priority=Priority.CRITICAL)
    g2 = req("greedy", 2, priority=Priority.CRITICAL)
    incoming = req("modest", 3, priority=Priority.LOW)
    assert choose(incoming, [g1, g2]) == g2.id


def test_owners_are_told_apart_by_owner_id_only() -> None:
    pr = Owner.pull_request("acme/infra", 7, user="alice")
    same_pr_other_user = Owner.pull_request("acme/infra", 7, user="bob")
    w1 = Request("w1", ("k",), pr, Priority.NORMAL, 1, 1, 301)
    w2 = Request("w2", ("k",), same_pr_other_user, Priority.NORMAL, 2, 2, 302)
    assert choose(req("ci", 3), [w1, w2]) == "w2"


def test_empty_queue_rejects_the_newcomer() -> None:
    incoming = req("anyone", 1)
    assert choose(incoming, []) == incoming.id


@pytest.mark.parametrize("newcomer", ["greedy", "modest", "other"])
def test_choice_is_always_the_newcomer_or_a_waiting_request(newcomer: str) -> None:
    waiting = [req("greedy", 1), req("greedy", 2), req("modest", 3)]
    incoming = req(newcomer, 4)
    assert choose(incoming, waiting) in {incoming.id, *(r.id for r in waiting)}


def test_hook_registers_the_policy_under_its_name() -> None:
    registry: Registry[Callable[[], OverflowPolicy]] = Registry("overflow policy")
    atlantis_sidecar_fair_share.atlantis_sidecar_register_overflow_policies(registry=registry)
    assert registry.names() == [POLICY_NAME] == ["fair_share"]
    assert isinstance(registry.get("fair_share")(), FairShare)


def test_module_is_a_valid_plugin_for_the_sidecars_hook_specs() -> None:
    from sidecar.plugin import spec

    pm = pluggy.PluginManager(spec.PROJECT)
    pm.add_hookspecs(spec)
    pm.register(atlantis_sidecar_fair_share, name="fair_share")
    pm.check_pending()
    hooks = {h.name for h in pm.get_hookcallers(atlantis_sidecar_fair_share) or []}
    assert hooks == {"atlantis_sidecar_register_overflow_policies"}
