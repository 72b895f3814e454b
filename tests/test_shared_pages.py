"""Per-op invariants on pages shared by many mappings (the precise path).

An op on one mapping of a page is checked at its own places and the page's summaries, in
O(1) whatever the number of the page's mappings; a page with at most WALK_WHOLE mappings,
or one the op changed whole (page_protect, clearing REF/MOD), is still walked whole.  The
hand-computed cases below put a test-only bug on a page with a few and with many
mappings and say at which op it is reported, on the precise path and on the fast path
(which re-runs the stream on the precise path to localise it).
"""

from __future__ import annotations

import pytest

from difftest.backend import Touched
from difftest.harness import Harness
from difftest.machine import PAGE_SIZE, PhysPool
from difftest.ops import OK, PROT_R, PROT_W, Create, Enter, Extract, PageProtect, Remove
from difftest.streams import make_stream
from impls import alpha, arm32

VA, PA = 0x00400000, 0x00200000
RW = PROT_R | PROT_W
FEW, MANY = 8, 100  # mappings of the shared page: walked whole / checked at the op's places
assert FEW <= alpha.WALK_WHOLE == arm32.WALK_WHOLE < MANY


def shared(n: int, access: int = 0) -> list:
    """Pmap 1 maps PA at VA, VA + 4 KiB, ...: n mappings of one page (ops 1..n)."""
    return [Create()] + [Enter(1, VA + i * PAGE_SIZE, PA, RW, access, False, False) for i in range(n)]


def first_invariant(registry, bug: str, ops: list, fast: bool = False):
    """The run's divergences, after checking that only ``bug`` diverges, and its first
    invariant divergence."""
    h = Harness.from_registry(registry, ["alpha-ref", "arm32-refcount", bug], "alpha-ref",
                              invariants_per_op=not fast, fast=fast)
    r = h.run(make_stream(ops))
    assert {d.backend for d in r.divergences} == {bug}
    inv = [d for d in r.divergences if d.kind == "invariant"]
    assert inv, f"{bug}: no invariant divergence"
    return r, inv[0]


@pytest.mark.parametrize("n", [FEW, MANY])
@pytest.mark.parametrize("fast", [False, True])
def test_a_remove_that_unlinks_another_pv_entry_is_caught_at_the_remove(registry, n, fast):
    """bug-pv-unlink: removing VA + 5 pages (op n + 1) unlinks the page's oldest other pv
    entry (VA's) instead of its own, which stays behind without a mapping."""
    gone = VA + 5 * PAGE_SIZE
    ops = shared(n) + [Remove(1, gone, gone + PAGE_SIZE), Extract(1, VA)]
    r, d = first_invariant(registry, "bug-pv-unlink", ops, fast)
    assert (d.op_index, d.op_kind, d.field) == (n + 1, "remove", "pv-match")
    assert d.signature == "invariant:bug-pv-unlink:remove:pv-match:violated"
    assert d.message == "pv entry (pmap 1, va 0x00405000) of page 0x00200000: no mapping at va"
    assert r.divergences[0] is d  # nothing before it
    assert r.localised == fast


@pytest.mark.parametrize("n", [FEW, MANY])
def test_an_enter_that_clears_referenced_is_caught_at_the_enter_on_every_other_mapping(registry, n):
    """bug-ref-reset: n mappings read-accessed (valid PTEs, page referenced), then an enter
    without access (op n + 1) clears the page's referenced bit: each of the n earlier
    mappings now lets the MMU read an unreferenced page."""
    ops = shared(n, access=PROT_R) + [Enter(1, VA + n * PAGE_SIZE, PA, RW, 0, False, False)]
    r, d = first_invariant(registry, "bug-ref-reset", ops)
    assert (d.op_index, d.field) == (n + 1, "refmod-emulation")
    assert d.message == "pmap 1 va 0x00400000: the PTE is valid but page 0x00200000 is not marked referenced"
    at_op = [x for x in r.divergences if x.op_index == n + 1]
    assert len(at_op) == n and all(x.field == "refmod-emulation" for x in at_op)
    assert {x.message.split(":")[0] for x in at_op} == {f"pmap 1 va {VA + i * PAGE_SIZE:#010x}" for i in range(n)}


def test_another_mappings_pv_flags_broken_by_an_enter_few_at_the_enter_many_later(registry):
    """bug-pv-flags: a write enter (op n + 1) sets PT_W in the pv entry of the page's oldest
    mapping (VA, not wired).  With a few mappings the page is walked at that enter; with
    many only the enter's own place is, and the break is found by the next op on that
    mapping (an extract of VA), or on the whole page (a page_protect that changes
    nothing), else by the audit (after op n + 2): the one thing an op on one mapping of a
    big page is not checked for per op."""
    msg = "pv entry (pmap 1, va 0x00400000) of page 0x00200000: PT_W is True but the PTE's wired bit is False"
    write = Enter(1, VA + 200 * PAGE_SIZE, PA, RW, PROT_W, False, False)
    for n, then, where in ((FEW, Extract(1, VA + PAGE_SIZE), (FEW + 1, "enter")),
                           (MANY, Extract(1, VA + PAGE_SIZE), (MANY + 2, "audit")),
                           (MANY, Extract(1, VA), (MANY + 2, "extract")),
                           (MANY, PageProtect(PA, RW), (MANY + 2, "page_protect"))):
        _r, d = first_invariant(registry, "bug-pv-flags", shared(n) + [write, then])
        assert ((d.op_index, d.op_kind), d.message) == (where, msg), (n, then)


# -- the checks themselves, on a hand-broken backend: Touched.whole_pages ----------------------------


def alpha_shared(n: int, access: int = 0) -> alpha.AlphaPmap:
    b = alpha.AlphaPmap(PhysPool(4096))
    b.pmap_create(1)
    for i in range(n):
        assert b.pmap_enter(1, VA + i * PAGE_SIZE, PA, RW, access, False, False) == OK
    return b


def messages(b, touched, name):
    (inv,) = [i for i in alpha.INVARIANTS if i.name == name]
    return list(inv.check(b, touched))


@pytest.mark.parametrize("n", [FEW, MANY])
def test_whole_pages_says_which_pages_to_walk(n):
    """A pv entry of another mapping of the page broken behind the backend's back: an op
    that changed only VA's mapping of the page sees it on a small page; on a big one only
    when the page is to be walked whole (whole_pages, or left None: today's meaning)."""
    b = alpha_shared(n)
    b.pvh_list[PA >> 12][(1, VA + 3 * PAGE_SIZE)] += 1  # a wrong pv_pte
    one = dict(pmaps=frozenset({1}), vas=((1, VA),), pas=frozenset({PA}))
    want = [f"pa 0x00200000: pv entry for pmap 1 va 0x00403000 points at L3 frame {b._pmap_l3pt(b.pmaps[1], VA) + 1:#x}, "
            f"the PTE is in {b._pmap_l3pt(b.pmaps[1], VA):#x}"]
    assert messages(b, Touched(**one, whole_pages=frozenset()), "alpha-pv-mappings") == (want if n == FEW else [])
    assert messages(b, Touched(**one, whole_pages=frozenset({PA})), "alpha-pv-mappings") == want
    assert messages(b, Touched(**one), "alpha-pv-mappings") == want
    assert messages(b, None, "alpha-pv-mappings") == want


def test_attributes_that_lost_a_bit_send_the_check_through_every_mapping():
    """REF/MOD on a big page: while the page's attributes lose nothing, an op on one mapping
    is checked at that mapping alone; once REF is lost (behind the backend's back), the
    next check of the page walks all of it and names each mapping left without fault."""
    b = alpha_shared(MANY, access=PROT_R)  # every PTE without PG_FOR: the page is REF
    one = Touched(frozenset({1}), ((1, VA),), frozenset({PA}), whole_pages=frozenset())
    assert messages(b, one, "alpha-refmod-emulation") == []
    b.pvh_attrs[PA >> 12] &= ~alpha.PGA_REFERENCED
    got = messages(b, one, "alpha-refmod-emulation")
    assert len(set(got)) == MANY  # (VA's twice: as the op's place and on the page's walk)
    assert got[0] == "pmap 1 va 0x00400000: readable without fault but pa 0x00200000 is not REF"
    # the page was checked with these attributes: the next op on one mapping is O(1) again
    assert messages(b, Touched(frozenset({1}), ((1, VA + PAGE_SIZE),), frozenset({PA}), whole_pages=frozenset()),
                    "alpha-refmod-emulation") == ["pmap 1 va 0x00401000: readable without fault but pa 0x00200000 is not REF"]


def test_alpha_pv_enter_refuses_an_entry_it_already_has():
    b = alpha_shared(2)
    with pytest.raises(alpha.PmapPanic, match="already in the pv table"):
        b.pmap_pv_enter(b.pmaps[1], PA >> 12, VA, b._pmap_l3pt(b.pmaps[1], VA))


@pytest.mark.parametrize("bug", [None, "bug-pv-unlink", "bug-ref-reset"])
def test_the_o1_checks_on_every_page_report_what_the_walks_report(registry, monkeypatch, bug):
    """Seeded streams (pages with a few mappings each: walked whole) run again with
    WALK_WHOLE 0, i.e. every page checked as a page shared by many is: the built-ins
    raise no false alarm, and the bugs an op makes at its own places or through the
    page's attributes are reported identically.  (Not bug-pv-flags: another mapping's
    entry, found at the next audit on such pages, as above.)"""
    backends = ["alpha-ref", "arm32-leaky", "arm32-refcount"] + ([bug] if bug else [])
    h = Harness.from_registry(registry, backends, "alpha-ref", invariants_per_op=True, checkpoint_every=64)
    gen = registry.generators["random"]
    streams = [gen.generate(seed, 300, 8192 if seed % 3 else 320) for seed in range(6)]

    def reports():
        return [[(d.op_index, d.signature, d.message, d.location) for d in h.run(s).divergences] for s in streams]

    walked = reports()
    monkeypatch.setattr(alpha, "WALK_WHOLE", 0)
    monkeypatch.setattr(arm32, "WALK_WHOLE", 0)
    assert reports() == walked
    invariant = {sig for run in walked for _i, sig, _m, _l in run if sig.startswith("invariant:")}
    assert invariant if bug else not invariant  # (the built-ins' runs: arm32-leaky's leak only)
