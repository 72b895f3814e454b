"""A reproducer corpus (``--corpus``) in a campaign split in shards and merged: each shard
replays its share of the corpus and leaves the directory alone, ``difftest merge`` judges the
merged bugs with every shard's replays and writes the corpus back once, and the result is
the unsharded campaign's.  Real campaigns through the CLI, on test-only backends broken,
fixed and broken again from night to night (tests/plugins/)."""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from cliutil import assert_one_line_error, clean_env, run_difftest
from difftest.corpus import shard_of
from reportdocs import check_against_docs

pytestmark = pytest.mark.slow

PLUGINS = Path(__file__).parent / "plugins"
COMMON = ["--ops-per-stream", "400", "--shrink-budget", "1", "--no-feedback"]
NIGHT1 = ["-p", "broken_backends", "fuzz", "--backends",
          "alpha-ref,arm32-leaky,bug-modloss,bug-wiredcount,bug-wrongpa,bug-extra", "--streams", "2", "--seed", "1"]
NIGHT2 = ["-p", "fixed_backends", "fuzz", "--backends", "alpha-ref,bug-modloss,bug-wiredcount", "--streams", "2",
          "--seed", "2"]
# bug-modloss still fixed, bug-wiredcount broken again, bug-wrongpa still broken, bug-two new
NIGHT3 = ["-p", "mixed_backends", "fuzz", "--backends",
          "alpha-ref,arm32-leaky,bug-modloss,bug-wiredcount,bug-wrongpa,bug-two", "--streams", "3", "--seed", "3"]
NIGHT3_STATUSES = [
    ("accounting:bug-wiredcount:unwire:wired_count:count-high", "regressed"),
    ("attribute:bug-two:*:modified:mod-lost", "new"),
    ("resource:arm32-leaky:*:pt_frames:pt-frames-held>needed", "known"),
    ("translation:bug-two:enter:pa:pa-mismatch", "new"),
    ("translation:bug-wrongpa:enter:pa:pa-mismatch", "open"),
    ("attribute:bug-modloss:*:modified:mod-lost", "fixed"),
]


def difftest(cwd: Path, *args: str):
    return run_difftest(*args, env=clean_env([PLUGINS]), cwd=cwd, timeout=300)


def night(cwd: Path, argv: list[str], corpus: Path | None, out: Path, *extra: str, workers: str = "1"):
    proc = difftest(cwd, *argv, "--no-progress", *COMMON, "--workers", workers, "--out", str(out), *extra,
                    *(["--corpus", str(corpus)] if corpus else []))
    assert proc.returncode in (0, 1), proc.stdout + proc.stderr
    return proc


def merge(cwd: Path, dirs: list[Path], out: Path, *extra: str):
    return run_difftest("-p", "mixed_backends", "merge", *map(str, dirs), "--out", str(out), *extra,
                        env=clean_env([PLUGINS]), cwd=cwd, timeout=120)


def report(run: Path) -> dict:
    return json.loads((run / "report.json").read_text())


def comparable(doc: dict) -> dict:
    """A report without its timings and its corpus's path (the two corpora compared are two
    copies of one)."""
    doc = {k: v for k, v in doc.items() if k != "timing"}
    if "corpus" in doc:
        doc["corpus"] = {k: v for k, v in doc["corpus"].items() if k != "path"}
    for bug in doc["bugs"]:
        if (bug.get("reproducer_path") or "").startswith("/"):  # in the corpus
            bug["reproducer_path"] = Path(bug["reproducer_path"]).name
    return doc


def files(corpus: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(corpus.iterdir())}


def replays(run: Path) -> list[str]:
    """The corpus entries a campaign replayed, one per journal line that says so."""
    lines = (run / "journal.jsonl").read_text().splitlines()
    return [json.loads(line)["entry"] for line in lines if '"type":"corpus"' in line]


def test_the_shard_of_an_entry_is_its_name_s_sha256_modulo_the_shards():
    # sha256(b"x") begins 2d711642b726b044 = 3274422879871479876: even, digits summing to 105
    # (a multiple of 3), ending in 6 (5k + 1); sha256(b"a") begins ca978112ca1bbdca =
    # 14598278634844962250: even, digits summing to 97 (3k + 1), ending in 0 (5k)
    assert hashlib.sha256(b"x").hexdigest()[:16] == "2d711642b726b044"
    assert [shard_of("x", n) for n in (1, 2, 3, 5)] == [0, 0, 0, 1]
    assert [shard_of("a", n) for n in (1, 2, 3, 5)] == [0, 0, 1, 0]


@dataclass
class Nights:
    base: Path
    pristine: Path  # the corpus after nights 1 and 2, as the third night's shards found it
    corpus: Path  # the shards' corpus, written by the merge
    whole: Path  # the third night unsharded, on a copy of the pristine corpus
    whole_corpus: Path
    shards: list[Path]
    untouched: bool  # the shards left the corpus's bytes as they were
    merged: object  # the merge's process


@pytest.fixture(scope="module")
def nights(tmp_path_factory) -> Nights:
    """Night 1 builds a corpus, night 2 fixes two of its bugs, night 3 breaks one again and
    finds new ones: whole, and in three shards."""
    base = tmp_path_factory.mktemp("nights")
    first = night(base, NIGHT1, base / "corpus", base / "n1")
    assert "5 added" in first.stdout, first.stdout
    night(base, NIGHT2, base / "corpus", base / "n2")
    pristine = base / "pristine"
    shutil.copytree(base / "corpus", pristine)
    shutil.copytree(pristine, base / "whole-corpus")
    night(base, NIGHT3, base / "whole-corpus", base / "whole", workers="2")
    shards = [base / f"s{i}" for i in range(3)]
    for i, shard in enumerate(shards):
        night(base, NIGHT3, base / "corpus", shard, "--shard", f"{i}/3")
    untouched = files(base / "corpus") == files(pristine)
    merged = merge(base, shards, base / "m")
    return Nights(base, pristine, base / "corpus", base / "whole", base / "whole-corpus", shards, untouched,
                  merged)


class TestThreeNightsInShards:
    """The third night's shards (one class: its tests share the nights, on one worker)."""

    def test_the_merge_judges_the_corpus_as_the_unsharded_campaign(self, nights):
        whole = report(nights.whole)
        assert [(b["head"], b["status"]) for b in whole["bugs"]] == NIGHT3_STATUSES
        assert whole["corpus"] == {"path": str(nights.whole_corpus), "entries": 5, "replayed": 4, "diverged": 3,
                                   "added": 2, "not_run": [{"head": "translation:bug-extra:audit:mapping:"
                                                                    "spurious-mapping", "backend": "bug-extra"}]}
        assert nights.merged.returncode == 1, nights.merged.stdout + nights.merged.stderr
        merged = report(nights.base / "m")
        assert comparable(merged) == comparable(whole)
        assert merged["corpus"]["path"] == str(nights.corpus)
        assert check_against_docs(merged, {"always", "campaign"}) == []
        assert f"corpus {nights.corpus}: 4 of 5 reproducers replayed, 3 still diverge, 2 added" in nights.merged.stdout
        # The shards left the corpus as it was; the merge wrote it back, as the whole night did.
        assert nights.untouched
        assert files(nights.corpus) == files(nights.whole_corpus) != files(nights.pristine)
        statuses = {json.loads(p.read_text())["head"]: json.loads(p.read_text())["status"]
                    for p in nights.corpus.glob("*.record.json")}
        assert statuses == {**{head: "fixed" if status == "fixed" else "open" for head, status in NIGHT3_STATUSES},
                            "translation:bug-extra:audit:mapping:spurious-mapping": "open"}

    def test_each_entry_is_replayed_by_exactly_one_shard(self, nights):
        runnable = sorted(p.name[: -len(".record.json")] for p in nights.pristine.glob("*.record.json")
                          if "bug-extra" not in p.name)
        by_shard = [sorted(replays(shard)) for shard in nights.shards]
        assert sorted(sum(by_shard, [])) == runnable == sorted(replays(nights.whole))
        assert by_shard == [[n for n in runnable if shard_of(n, 3) == i] for i in range(3)]
        assert all(by_shard), by_shard  # (each shard has a share: the test says something of each)
        for i, shard in enumerate(nights.shards):
            assert check_against_docs(report(shard), {"always", "campaign", "fuzz"}) == []
            doc = report(shard)["corpus"]
            assert (doc["shard"], doc["replayed"], doc["other_shards"], doc["added"]) == (
                f"{i}/3", len(by_shard[i]), 5 - len([n for n in nights.pristine.glob("*.record.json")
                                                     if shard_of(n.name[: -len(".record.json")], 3) == i]), 0)

    def test_a_resumed_shard_replays_nothing_twice_and_loses_nothing(self, nights):
        base = nights.base
        two = next(s for s in nights.shards if len(replays(s)) == 2)  # killed between its two replays
        resumed = base / "resumed"
        shutil.copytree(two, resumed)
        journal = resumed / "journal.jsonl"
        lines = journal.read_text().splitlines(keepends=True)
        first_replay = next(i for i, line in enumerate(lines) if '"type":"corpus"' in line)
        journal.write_text("".join(lines[: first_replay + 1]))
        for name in ("summary.json", "report.json"):
            (resumed / name).unlink()
        # The shards' corpus has been merged since: not the one the shard started from.
        late = difftest(base, "-p", "mixed_backends", "fuzz", "--no-progress", "--resume", str(resumed))
        assert late.returncode == 2 and "Traceback" not in late.stderr
        (error,) = [line for line in late.stderr.splitlines() if line.startswith("difftest: error")]
        assert "changed since this shard started (merged already?)" in error, error
        copy = base / "copy-of-pristine"
        shutil.copytree(nights.pristine, copy)
        proc = difftest(base, "-p", "mixed_backends", "fuzz", "--no-progress", "--resume", str(resumed),
                        "--corpus", str(copy))
        assert proc.returncode == 1, proc.stdout + proc.stderr
        assert replays(resumed) == replays(two)  # the first kept, the second run once
        assert files(copy) == files(nights.pristine)
        dirs = [resumed if s == two else s for s in nights.shards]
        again = merge(base, dirs, base / "m-resumed", "--corpus", str(copy))
        assert again.returncode == 1, again.stdout + again.stderr
        assert comparable(report(base / "m-resumed")) == comparable(report(nights.whole))
        assert files(copy) == files(nights.whole_corpus)

    def test_a_corpus_missing_damaged_or_changed_at_merge_time_is_bad_input(self, nights):
        base = nights.base
        gone = merge(base, nights.shards, base / "x1", "--corpus", str(base / "nowhere"))
        assert gone.returncode == 2
        assert_one_line_error(gone.stderr, "nowhere: no such directory", "5 entries")
        damaged = base / "damaged"
        shutil.copytree(nights.pristine, damaged)
        next(damaged.glob("*.record.json")).write_text("{garbage")
        bad = merge(base, nights.shards, base / "x2", "--corpus", str(damaged))
        assert bad.returncode == 2
        assert_one_line_error(bad.stderr, ".record.json: not a corpus record")
        # Merged already: the corpus the shards replayed has been written back since.
        twice = merge(base, nights.shards, base / "x3")
        assert twice.returncode == 2
        assert_one_line_error(twice.stderr, str(nights.corpus), "since the shards read it", "merged already")
        assert not any((base / x).exists() for x in ("x1", "x2", "x3"))

    def test_a_merge_lacking_shards_judges_what_it_has_and_writes_no_corpus(self, nights):
        base = nights.base
        copy = base / "lacking"
        shutil.copytree(nights.pristine, copy)
        proc = merge(base, [nights.shards[0], nights.shards[2]], base / "m02", "--corpus", str(copy))
        assert proc.returncode == 1, proc.stdout + proc.stderr
        assert "missing shard 1 of 3" in proc.stderr and f"corpus {copy} not written" in proc.stderr
        assert files(copy) == files(nights.pristine)
        doc = report(base / "m02")["corpus"]
        share1 = sorted((json.loads(p.read_text())["head"], json.loads(p.read_text())["backend"])
                        for p in copy.glob("*.record.json") if shard_of(p.name[: -len(".record.json")], 3) == 1)
        assert sorted((e["head"], e["backend"]) for e in doc["not_run"]) == share1 and doc["added"] == 0


TINY = ["fuzz", "--no-progress", "--streams", "2", "--ops-per-stream", "100", "--seed", "4", "--workers", "1",
        "--no-feedback", "--shrink-budget", "1"]


def test_a_first_night_in_shards_makes_the_corpus_at_the_merge(tmp_path):
    def tiny(out: str, *extra: str):
        proc = difftest(tmp_path, *TINY, "--out", str(tmp_path / out), *extra)
        assert proc.returncode == 0, proc.stdout + proc.stderr

    tiny("whole", "--corpus", str(tmp_path / "whole-corpus"))
    assert len(list((tmp_path / "whole-corpus").glob("*.record.json"))) == 1  # the leak, found in one stream
    for i in (0, 1):
        tiny(f"s{i}", "--corpus", str(tmp_path / "corpus"), "--shard", f"{i}/2")
    assert not (tmp_path / "corpus").exists()  # not made by a shard
    merged = difftest(tmp_path, "merge", str(tmp_path / "s0"), str(tmp_path / "s1"), "--out", str(tmp_path / "m"))
    assert merged.returncode == 0, merged.stdout + merged.stderr
    assert comparable(report(tmp_path / "m")) == comparable(report(tmp_path / "whole"))
    assert files(tmp_path / "corpus") == files(tmp_path / "whole-corpus")

    # Shards on different corpora, or some on none: bad input, nothing written.
    tiny("s1-other", "--corpus", str(tmp_path / "other"), "--shard", "1/2")
    tiny("s1-none", "--shard", "1/2")
    tiny("s0-none", "--shard", "0/2")
    for dirs, words in ((["s0", "s1-other"], ["s1-other: started with --corpus", "give merge --corpus DIR"]),
                        (["s0", "s1-none"], ["s1-none: started without --corpus, ", "s0 with one"])):
        proc = difftest(tmp_path, "merge", *(str(tmp_path / d) for d in dirs), "--out", str(tmp_path / "x"))
        assert proc.returncode == 2
        assert_one_line_error(proc.stderr, *words)
    # Named, two copies of one corpus are one: both shards read it empty.
    named = difftest(tmp_path, "merge", str(tmp_path / "s0"), str(tmp_path / "s1-other"), "--out",
                     str(tmp_path / "m2"), "--corpus", str(tmp_path / "named"))
    assert named.returncode == 0, named.stdout + named.stderr
    assert files(tmp_path / "named") == files(tmp_path / "whole-corpus")
    # Shards run without a corpus: merge as ever, and no corpus to give it.
    plain = [str(tmp_path / "s0-none"), str(tmp_path / "s1-none")]
    proc = difftest(tmp_path, "merge", *plain, "--out", str(tmp_path / "m3"))
    assert proc.returncode == 0 and "corpus" not in report(tmp_path / "m3"), proc.stderr
    given = difftest(tmp_path, "merge", *plain, "--out", str(tmp_path / "x"), "--corpus", str(tmp_path / "c"))
    assert given.returncode == 2
    assert_one_line_error(given.stderr, "the shards were started without --corpus")
    assert not (tmp_path / "c").exists() and not (tmp_path / "x").exists()
