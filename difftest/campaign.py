"""Fuzz campaigns: many seeded streams, run in worker processes, deduplicated, minimised.

The unit of work is one stream, numbered k = 0, 1, 2, ...; its seed is derived from the
campaign seed and k only, so stream k is the same whatever the number of workers, shards
or machines.  Results are committed strictly in k order (a reorder buffer), so the first
hit of a signature, its reproducer and the report do not depend on the number of workers.

Everything found is on disk as soon as it is committed (``OUT/journal.jsonl``, appended
line by line, small and bounded: ``difftest.journal``; ``OUT/divergences/*.json``,
``OUT/corpus/*.record.json`` and the reproducers ``OUT/corpus/*.stream.json``, written then
renamed); ``--resume OUT`` reads them back (``OUT/summary.json`` and the journal's tail)
and goes on at the first uncommitted stream.
At its end the campaign records what the reports' plots draw (``OUT/plots.json``,
``difftest/plotdata.py``): reports render it and never run the campaign's streams again.

Workers run through a ``concurrent.futures.Executor`` made by an *executor factory*
(a local process pool by default; ``difftest.cluster.DaskCluster`` for a Dask cluster).
A worker's death shows as ``concurrent.futures.BrokenExecutor``: a local pool's
``BrokenProcessPool`` fails every task in flight (``breaks_whole_pool``), a cluster's
``WorkerLost`` only the task whose worker died.  Each task
carries the environment it needs (plugins, backends), so workers need no initializer.
"""

from __future__ import annotations

import bisect
import concurrent.futures as cf
import fcntl
import json
import multiprocessing
import os
import time
from collections import Counter
from dataclasses import asdict, dataclass, fields as dataclass_fields
from pathlib import Path
from typing import Any, Callable, Sequence

from difftest import __version__, plotdata, streams
from difftest.bugs import Member, group, representative, streams_hit
from difftest.baseline import match_bug, match_known
from difftest.corpus import Corpus, changed_entry, shard_of, slug
from difftest.divergence import KnownDivergence
from difftest.errors import BadInput, NothingToRun, short
from difftest.features import CoverageTally
from difftest.journal import (
    JOURNAL,
    SEGMENT_BYTES,
    SignatureTable,
    close_segment,
    ranges,
    read_summary,
    record_problem,
    segment_lines,
    segments,
    unranges,
    write_summary,
)
from difftest.jsonstream import read_json_file
from difftest.feedback import FeedbackPool, Recipe, UnitScheduler
from difftest.report import REPORT_FORMAT
from difftest.streams import atomic_write_text
from difftest.units import (  # the worker side; names kept importable from here too
    breaks_whole_pool,
    CampaignConfig,
    CorpusTask,
    ExecutorFactory,
    kill_workers,
    local_process_pool,
    make_stream,
    mark_running,
    replay_corpus_entry,
    run_alone,
    run_unit,
    shrink_unit,
    ShrinkTask,
    unit_allowance,
    unit_seed,
    UnitResult,
    UnitTask,
    Watchdog,
    watchdog_limits,
    worker_slots,
    _worker_death_hit,
)

CAMPAIGN_FORMAT = "difftest.campaign/1"
#: bug statuses that make ``difftest fuzz`` exit 1: seen now and not in the baseline
FAILING_STATUSES = ("new", "open", "regressed")
LOCK = "lock"  # held (flock) by the one process running the campaign; holds its pid


# -- the campaign (parent side) --------------------------------------------------------------------


@dataclass
class SignatureRecord:
    signature: str
    first_k: int
    first_seed: int
    first: dict[str, Any]
    streams: int = 0
    events: int = 0
    reproducer: dict[str, Any] | None = None
    reproducer_ops: int | None = None
    shrink_error: str | None = None
    head: list[dict[str, Any]] | None = None  # bugs.head_of its minimised reproducer

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def member(self) -> Member:
        return Member(signature=self.signature, first=self.first, first_k=self.first_k, first_seed=self.first_seed,
                      head=self.head, explained_by=self.first.get("explained_by"), reproducer=self.reproducer,
                      reproducer_ops=self.reproducer_ops)


SIGNATURE_RECORD_FIELDS = tuple(f.name for f in dataclass_fields(SignatureRecord))


def stream_texts(report: dict[str, Any]) -> dict[int, str]:
    """The reproducers of a report (``bugs`` and ``divergences``) that are stream documents,
    by ``id``: their ``streams.dumps_doc`` texts, for ``streams.json_with_streams``."""
    texts: dict[int, str] = {}
    for entry in [*report.get("bugs", ()), *report.get("divergences", ())]:
        doc = entry.get("reproducer")
        if isinstance(doc, dict) and id(doc) not in texts and tuple(doc) == streams.DOC_KEYS \
                and isinstance(doc["ops"], list):
            texts[id(doc)] = streams.dumps_doc(doc)
    return texts


def report_text(report: dict[str, Any]) -> str:
    """``report.json``'s text: ``json.dumps(report, indent=2)``, its reproducers one op a line and its
    lists of numbers on one line (``streams.json_with_streams``)."""
    return streams.json_with_streams(report, 2, stream_texts(report))


@dataclass
class Survival:
    """How often one backend ran out of memory (the harness stopped it there)."""

    streams: int = 0  # streams it ran in
    out_of_memory: int = 0  # ... and ran out of memory in
    first_out_of_memory_op: int | None = None  # the earliest op at which it did, over all streams

    def add(self, oom_op: int | None) -> None:
        self.streams += 1
        if oom_op is not None:
            self.out_of_memory += 1
            if self.first_out_of_memory_op is None or oom_op < self.first_out_of_memory_op:
                self.first_out_of_memory_op = oom_op

    def merge(self, other: "Survival") -> None:
        self.streams += other.streams
        self.out_of_memory += other.out_of_memory
        op = other.first_out_of_memory_op
        if op is not None and (self.first_out_of_memory_op is None or op < self.first_out_of_memory_op):
            self.first_out_of_memory_op = op

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def read_corpus_record(path: Path) -> dict[str, Any]:
    """An ``OUT/corpus/*.json`` file: a signature's record, or a plain stream file (which
    has no 'signature'); anything else is bad input naming the file."""
    doc = read_json_file(path, "corpus record")
    repro = doc.get("reproducer")
    if "signature" in doc and repro is not None and not (isinstance(repro, dict) and isinstance(repro.get("ops"), list)):
        raise BadInput(f"{path}: not a corpus record ('reproducer' is not a stream)")
    return doc


def lock_run_dir(out: Path) -> int:
    """Take ``OUT/lock`` for this process (``flock``, released when it exits, even on
    ``kill -9``) and write our pid in it.  A directory in use: ``BadInput`` naming the pid
    that holds it.  Returns the lock's descriptor."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd = os.open(out / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise BadInput(f"{out}: cannot take the campaign's lock: {exc.strerror or exc}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
        os.close(fd)
        raise BadInput(f"{out} is in use by another campaign (pid {holder}): "
                       "wait for it to end or use another --out") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


class Campaign:
    """Runs a campaign into ``out``; ``run()`` returns the report document."""

    def __init__(
        self,
        config: CampaignConfig,
        out: Path,
        known: Sequence[KnownDivergence] = (),
        workers: int = 1,
        budget: float | None = None,
        executor_factory: ExecutorFactory = local_process_pool,
        progress: Callable[[dict[str, Any]], None] | None = None,
        resume: bool = False,
        read_only: bool = False,
        corpus: Corpus | None = None,
    ) -> None:
        self.config = config
        self.out = Path(out)
        self.known = list(known)
        self.workers = max(1, workers)
        self.budget = budget
        self.executor_factory = executor_factory
        self.progress = progress
        self.records: dict[str, SignatureRecord] = {}
        self.committed: list[int] = []
        self.ops = 0
        self.stream_seconds = 0.0
        self.worker_deaths: list[dict[str, Any]] = []
        # streams by the set of signatures each showed (a bug's stream count is a union)
        self.hit_sets: Counter[frozenset[str]] = Counter()
        self.survival: dict[str, Survival] = {name: Survival() for name in config.backends}
        self.timeline: list[tuple[float, int, str]] = []  # (elapsed, streams, signature) of new hits
        # (elapsed, n) each time the campaign first kept n worker threads busy (a cluster grows)
        self.workers_timeline: list[tuple[float, int]] = []
        self.started = time.monotonic()
        self.prior_elapsed = 0.0
        self._shrinks: dict[cf.Future, str] = {}
        self._shrink_attempts: dict[str, int] = {}
        self._watchdog = Watchdog()
        self._limits = watchdog_limits(config)
        self._journal = None
        self.coverage = CoverageTally()
        self.feedback = (FeedbackPool(config.seed, config.shard_index, config.shard_count)
                         if config.feedback else None)
        self.corpus = corpus
        if corpus is not None:  # a shard replays its share of the corpus (difftest.corpus.shard_of)
            corpus.shard = (config.shard_index, config.shard_count)
        self.corpus_runs: dict[str, dict[str, Any]] = {}  # corpus entry -> what replaying it did
        self.plots: dict[str, Any] | None = None  # what the reports' plots draw (difftest/plotdata.py)
        # stream k -> its statistics, taken by the worker that ran it, for the streams the
        # plots' coverage may count (the first ones run): the plot step need not generate them
        self._stream_stats: dict[int, dict[str, Any]] = {}
        self._whole_stream: tuple[int, dict[str, Any], int] | None = None  # (k, stream k as JSON, its ops)
        self._stream_text: tuple[dict[str, Any], str] | None = None  # (a reproducer, its stream file text)
        # signature -> (streams, events) its OUT/divergences file was last written with
        self._written_counts: dict[str, tuple[int, int]] = {}
        self._stats_asked: list[int] = []  # streams whose statistics are (or were) known or asked
        self._traced_runs: dict[int, Any] = {}  # stream k -> its run with the trace on (the plots')
        self._committed_set: set[int] = set()
        self.signatures = SignatureTable()  # the journal's numbering of signatures
        self.segments = 0  # closed journal segments
        self.segment_bytes = SEGMENT_BYTES
        self._journal_lines = 0  # lines in OUT/journal.jsonl, and the last one (the summary's check)
        self._last_line = ""
        self._in_commit = False
        self._lock: int | None = None
        if not read_only:
            self._lock = lock_run_dir(self.out)
        if resume or read_only:
            self._load_state(repair=not read_only)
        else:
            self._start_dir()
        if resume and corpus is not None and config.shard_count > 1:
            self._check_shard_corpus(corpus)

    def _check_shard_corpus(self, corpus: Corpus) -> None:
        """A resumed shard replays its share of the corpus it started from: the merge of
        the shards judges against that one (``difftest.corpus``)."""
        seen = campaign_corpus(self.out).entries
        change = None if seen is None else changed_entry(seen, corpus.fingerprint())
        if change:
            raise BadInput(f"--corpus {corpus.path}: {change} since this shard started (merged already?): "
                           "resume it on the corpus it started from")

    # -- files --------------------------------------------------------------------------------

    def _start_dir(self) -> None:
        if (self.out / JOURNAL).exists():
            raise BadInput(f"{self.out} already holds a campaign: use --resume {self.out} or another --out")
        (self.out / "divergences").mkdir(parents=True, exist_ok=True)
        (self.out / "corpus").mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.out / "campaign.json", json.dumps(
            {"format": CAMPAIGN_FORMAT, "config": self.config.to_json(),
             "known": [asdict(k) for k in self.known], "version": __version__,
             "corpus": str(self.corpus.path) if self.corpus is not None else None,
             # the state of the corpus replayed: a merge of shards judges against that one
             "corpus_entries": self.corpus.fingerprint() if self.corpus is not None else None,
             "budget": self.budget}, indent=2))

    def _load_state(self, repair: bool = True) -> None:
        """Read the campaign back: its summary and the journal past it (without a summary,
        the closed segments and the whole journal), then the reproducers."""
        journal = self.out / JOURNAL
        if not (self.out / "campaign.json").exists():
            raise BadInput(f"{self.out}: no campaign to resume (campaign.json missing)")
        summary = read_summary(self.out)
        offset = 0
        if summary is not None:
            self._restore_summary(summary)
            self.segments = summary["covers"]["segments"]
            offset = summary["covers"]["journal_bytes"]
        else:
            for n, path in enumerate(segments(self.out), 1):
                for lineno, line in segment_lines(path):
                    self._replay_line(path, lineno, line, last=False)
                self.segments = n
        if journal.exists():
            self._replay_tail(journal, offset, summary, repair)
        for path in sorted((self.out / "corpus").glob("*.record.json")):
            doc = read_corpus_record(path)
            rec = self.records.get(doc.get("signature", ""))
            if rec is not None and doc.get("reproducer") is not None:
                rec.reproducer = doc["reproducer"]
                rec.reproducer_ops = len(doc["reproducer"]["ops"])
                rec.shrink_error = doc.get("shrink_error")
                rec.head = doc.get("head")
        self.plots = _read_plots(self.out, strict=not repair)

    def _replay_tail(self, journal: Path, offset: int, summary: dict[str, Any] | None, repair: bool) -> None:
        """Replay the journal from byte ``offset`` (what the summary does not cover), never
        reading what is before it but the line that ends there (a check)."""
        with open(journal, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            check = (summary or {}).get("covers", {}).get("last_line", "")
            f.seek(max(0, offset - len(check.encode())))
            seen = f.read(offset - f.tell()).decode("utf-8", "replace")
            if size < offset or seen != check:
                raise BadInput(f"{journal} does not continue {self.out / 'summary.json'} (edited or replaced?): "
                               "remove summary.json to read the journal whole")
            data = f.read()
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise BadInput(f"{journal}: not UTF-8 text (byte {offset + exc.start})") from None
        lines = text.splitlines(keepends=True)
        self._journal_lines = (summary or {}).get("covers", {}).get("journal_lines", 0)
        self._last_line = check
        good = 0
        for lineno, line in enumerate(lines, 1):
            last = lineno == len(lines)
            if not line.endswith("\n") and last:
                break  # torn by a kill: that stream is run again
            if not self._replay_line(journal, self._journal_lines + 1, line, last):
                break
            good += len(line.encode("utf-8"))
            self._journal_lines += 1
            self._last_line = line
        # Drop a torn tail so that appends start on a clean line.
        if repair and offset + good != size:
            os.truncate(journal, offset + good)

    def _replay_line(self, where: Path, lineno: int, line: str, last: bool) -> bool:
        """Replay one journal line; False for a torn last line (BadInput for a bad one)."""
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            if last:
                return False
            raise BadInput(f"{where}:{lineno}: not a JSON record") from None
        problem = record_problem(entry)
        if problem is None:
            try:
                self._replay_journal_entry(entry)
            except ValueError as exc:
                problem = str(exc)
        if problem:
            raise BadInput(f"{where}:{lineno}: {problem}")
        return True

    def _replay_journal_entry(self, entry: dict[str, Any]) -> None:
        if entry.get("type") == "elapsed":
            self.prior_elapsed = max(self.prior_elapsed, entry["elapsed"])
            return
        if entry.get("type") == "corpus":
            self.corpus_runs[entry["entry"]] = entry["outcome"]
            return
        # The campaign's time when the stream was committed: a killed session's time counts.
        self.prior_elapsed = max(self.prior_elapsed, entry.get("at", 0.0))
        k = entry["k"]
        hits = self.signatures.decode(entry)
        if k in self._committed_set:
            return  # written twice (two sessions on one directory before it was locked; a summary's)
        for sig, (_, first) in hits.items():
            if first is None and sig not in self.records:
                raise ValueError(f"record's hit {short(sig)} has no first sighting before it")
        features = self.coverage.replay(entry)
        if self.feedback is not None:
            self.feedback.replay(k, entry, features)
        seed = entry["seed"] if "seed" in entry else unit_seed(self.config.seed, k)
        self._commit_hits(k, seed, entry["ops"], hits, entry.get("elapsed", 0.0),
                          out_of_memory=entry.get("oom") or {}, ran=entry.get("backends"), at=entry.get("at"),
                          death=entry.get("death"))

    # -- the summary (difftest.journal) ---------------------------------------------------------------

    def _summary_state(self) -> dict[str, Any]:
        """Everything ``_load_state`` rebuilds from the journal, as of now."""
        ids = self.signatures.ids
        tally = self.coverage
        state: dict[str, Any] = {
            "committed": ranges(self.committed),
            "ops": self.ops,
            "stream_seconds": round(self.stream_seconds, 6),
            "elapsed": round(self.elapsed(), 3),
            "signatures": self.signatures.names,
            "records": {sig: {"first_k": r.first_k, "first_seed": r.first_seed, "first": r.first,
                              "streams": r.streams, "events": r.events} for sig, r in self.records.items()},
            "hit_sets": sorted([sorted(ids[s] for s in sigs), n] for sigs, n in self.hit_sets.items()),
            "survival": {name: s.to_json() for name, s in self.survival.items()},
            "coverage": tally.to_json(),
            "corpus_runs": self.corpus_runs,
            "timeline": [[t, n, s] for t, n, s in self.timeline],
            "worker_deaths": self.worker_deaths,
        }
        if self.feedback is not None:
            state["feedback"] = self.feedback.to_json({r.first_k for r in self.records.values()}, tally.encode)
        return state

    def _restore_summary(self, doc: dict[str, Any]) -> None:
        try:
            self.signatures = SignatureTable(doc["signatures"])
            for sig, r in doc["records"].items():
                self.records[sig] = SignatureRecord(signature=sig, first_k=r["first_k"], first_seed=r["first_seed"],
                                                    first=r["first"], streams=r["streams"], events=r["events"])
            self.committed = unranges(doc["committed"])
            self._committed_set = set(self.committed)
            self.ops, self.stream_seconds = doc["ops"], doc["stream_seconds"]
            self.prior_elapsed = doc["elapsed"]
            names = self.signatures.names
            self.hit_sets = Counter({frozenset(names[i] for i in ids): n for ids, n in doc["hit_sets"]})
            for name, surv in doc["survival"].items():
                self.survival[name] = Survival(**surv)
            self.coverage.restore(doc["coverage"])
            if self.feedback is not None:
                self.feedback.restore(doc["feedback"], self.coverage.decode)
            self.corpus_runs = dict(doc["corpus_runs"])
            # (a summary written before these were kept has neither)
            self.timeline = [(float(t), int(n), str(sig)) for t, n, sig in doc.get("timeline", ())]
            self.worker_deaths = [dict(d) for d in doc.get("worker_deaths", ())]
        except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
            raise BadInput(f"{self.out / 'summary.json'}: not a campaign summary "
                           f"({type(exc).__name__}: {short(str(exc), 60)})") from None

    def _write_summary(self) -> None:
        size = (self.out / JOURNAL).stat().st_size if (self.out / JOURNAL).exists() else 0
        write_summary(self.out, self._summary_state(), self.segments, size, self._journal_lines, self._last_line)

    def _close_segment(self) -> None:
        """The journal passed ``segment_bytes``: close it as a gzip segment, write the
        summary that covers it, then start the journal afresh (each step safe to
        interrupt: a stream read twice counts once)."""
        if self._journal is not None:
            self._journal.close()
            self._journal = None
        close_segment(self.out, self.segments + 1)
        self.segments += 1
        self._journal_lines, self._last_line = 0, ""
        write_summary(self.out, self._summary_state(), self.segments, 0, 0, "")
        atomic_write_text(self.out / JOURNAL, "")

    def _write_divergence(self, rec: SignatureRecord) -> None:
        doc = {name: getattr(rec, name) for name in SIGNATURE_RECORD_FIELDS}  # to_json() without its deep copy
        atomic_write_text(self.out / "divergences" / f"{slug(rec.signature)}.json",
                          self._with_reproducer(doc, rec, indent=2))
        self._written_counts[rec.signature] = (rec.streams, rec.events)

    def _settle_divergence_files(self) -> None:
        """At the campaign's end: write again each ``OUT/divergences`` file whose counts
        (``streams``, ``events``) moved since it was written.  A file is written when its
        signature is first seen and when its shrink ends, which depends on the workers'
        timing; its final counts then depend only on the streams run, as the report's do."""
        for sig, rec in sorted(self.records.items()):
            if self._written_counts.get(sig) != (rec.streams, rec.events):
                self._write_divergence(rec)

    def _write_corpus(self, rec: SignatureRecord) -> None:
        doc = {"signature": rec.signature, "first_k": rec.first_k, "reproducer": rec.reproducer,
               "shrink_error": rec.shrink_error, "head": rec.head}
        # *.record.json and *.stream.json: `difftest validate corpus/*.stream.json` takes
        # the stream files alone.
        atomic_write_text(self.out / "corpus" / f"{slug(rec.signature)}.record.json",
                          self._with_reproducer(doc, rec, indent=1))
        text = self._reproducer_text(rec)
        if text is not None:
            # The reproducer as a plain stream file, for `difftest replay`.
            atomic_write_text(self.out / "corpus" / f"{slug(rec.signature)}.stream.json", text)

    def _with_reproducer(self, doc: dict[str, Any], rec: SignatureRecord, indent: int) -> str:
        """``doc`` (which holds ``rec.reproducer``) as indented JSON, the reproducer in its
        stream file's text."""
        text = self._reproducer_text(rec)
        return streams.json_with_streams(doc, indent, {} if text is None else {id(rec.reproducer): text})

    def _reproducer_text(self, rec: SignatureRecord) -> str | None:
        """``rec``'s reproducer as a stream file's text (``streams.dumps``), checked as a
        stream and encoded once per reproducer (signatures of one stream share it when
        it is the whole stream)."""
        doc = rec.reproducer
        if doc is None:
            return None
        if self._stream_text is None or self._stream_text[0] is not doc:
            self._stream_text = (doc, streams.dumps(streams.stream_from_json(doc)))
        return self._stream_text[1]

    def _append_journal(self, entry: dict[str, Any]) -> None:
        if self._journal is None:
            self._journal = open(self.out / JOURNAL, "a", encoding="utf-8")
        line = json.dumps(entry, allow_nan=False, sort_keys=True, separators=(",", ":")) + "\n"
        self._journal.write(line)
        self._journal_lines += 1
        self._last_line = line
        self._journal.flush()
        os.fsync(self._journal.fileno())
        if self._journal.tell() >= self.segment_bytes:
            self._close_segment()

    # -- committing ----------------------------------------------------------------------------

    def _commit(self, res: UnitResult) -> list[SignatureRecord]:
        self._in_commit = True  # an interrupt in here leaves memory ahead of the journal
        hits = {sig: [n, first] for sig, (n, first) in sorted(res.hits.items())}
        at = round(self.elapsed(), 3)  # (the journal's "at", and the time of a first sighting)
        new = self._commit_hits(res.k, res.seed, res.ops, hits, res.elapsed, out_of_memory=res.out_of_memory,
                                ran=res.backends, at=at, death=res.death)
        for rec in new:
            self._write_divergence(rec)
        # The journal's line (difftest.journal): counts, and a divergence only at its first sighting.
        entry = {"k": res.k, "ops": res.ops, **self.signatures.encode(hits), "elapsed": round(res.elapsed, 4),
                 "at": at}
        if res.out_of_memory:
            entry["oom"] = dict(sorted(res.out_of_memory.items()))
        if res.backends is not None:
            entry["backends"] = list(res.backends)
        if res.death is not None:
            entry["death"] = res.death
        if res.stats is not None:
            self._stream_stats[res.k] = res.stats
        if res.traced is not None:
            self._traced_runs[res.k] = res.traced
        entry.update(self._commit_coverage(res))
        self._append_journal(entry)
        self._in_commit = False
        return new

    def _commit_coverage(self, res: UnitResult) -> dict[str, Any]:
        """Count the stream's features (and with feedback, score it): its journal fields."""
        recipe = self._recipe(res.k)
        fields = self.coverage.commit(res.features, mutant=recipe is not None and recipe.parent is not None)
        if self.feedback is not None and recipe is not None:
            self.feedback.commit(res.k, res.features)
            fields.update({key: v for key, v in recipe.journal().items() if v is not None})
        return fields

    def _ask_stats(self, k: int) -> bool:
        """Whether stream k's worker should take its statistics: while k may be among the
        first streams run, those the plots' coverage counts (``plotdata.coverage_units``)."""
        n = plotdata.coverage_count(self.config.ops_per_stream)
        asked = self._stats_asked
        if len(asked) >= n and k > asked[n - 1]:
            return False
        bisect.insort(asked, k)
        return True

    def _recipe(self, k: int) -> Recipe | None:
        return None if self.feedback is None else self.feedback.recipe_for(k)

    def _commit_hits(self, k: int, seed: int, ops: int, hits: dict[str, Any], elapsed: float,
                     out_of_memory: dict[str, int] | None = None, ran: Sequence[str] | None = None,
                     at: float | None = None, death: dict[str, Any] | None = None) -> list[SignatureRecord]:
        """Count stream k (run now, or read back from the journal); ``at``: the campaign's
        time when it was committed (a journal line before there was one has none)."""
        self.committed.append(k)
        self._committed_set.add(k)
        self.ops += ops
        self.stream_seconds += elapsed
        if death is not None:
            self.worker_deaths.append({"stream": k, "seed": seed, **death})
        if hits:
            self.hit_sets[frozenset(hits)] += 1
        for name in (self.config.backends if ran is None else ran):
            self.survival.setdefault(name, Survival()).add((out_of_memory or {}).get(name))
        new = []
        for sig, (n, first) in sorted(hits.items()):
            rec = self.records.get(sig)
            if rec is None:
                rec = SignatureRecord(signature=sig, first_k=k, first_seed=seed, first=first)
                self.records[sig] = rec
                new.append(rec)
                if at is not None:
                    self.timeline.append((at, len(self.committed), sig))
            rec.streams += 1
            rec.events += n
        return new

    def elapsed(self) -> float:
        return self.prior_elapsed + time.monotonic() - self.started

    def _slots(self, executor: cf.Executor) -> int:
        """Worker threads to keep busy now (``units.worker_slots``: ``workers`` for a local
        pool, a cluster's threads as they are now), noted when it is more than ever before."""
        n = worker_slots(executor, self.workers)
        if not self.workers_timeline or n > self.workers_timeline[-1][1]:
            self.workers_timeline.append((round(self.elapsed(), 3), n))
        return n

    # -- the loop -----------------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        config = self.config
        if config.streams is None and self.budget is None:
            raise BadInput("a campaign needs --budget or --streams")
        done = set(self.committed)
        units = (k for k in config.units() if k not in done)
        deadline = None if self.budget is None else time.monotonic() + max(0.0, self.budget - self.prior_elapsed)
        children_before = {c.pid for c in multiprocessing.active_children()}
        self._stats_asked = sorted(self.committed)  # a resumed campaign's: regenerated if counted
        # The campaign's first stream is run with the trace on: the plot step's long stream
        # is most often that one (the first divergence's), and need not be run again.
        traced = next(iter(config.units()), None) if config.ops_per_stream <= plotdata.LONG_STREAM_MAX_OPS \
            else None
        executor = self.executor_factory(self.workers)
        pending: dict[cf.Future, int] = {}
        buffer: dict[int, UnitResult] = {}
        submitted: list[int] = []
        exhausted = False
        interrupted = False
        try:
            executor = self._replay_corpus(executor)
            # Signatures found before a kill whose reproducer was not written: shrink again.
            for rec in sorted(self.records.values(), key=lambda r: r.first_k):
                if rec.reproducer is None:
                    self._submit_shrink(executor, rec)
            sched = UnitScheduler(units, self.feedback, lookahead=2 * self._slots(executor))
            while True:
                # Two streams in flight per worker thread, as many as there are now: a
                # cluster's workers that join late get streams too.  Which worker runs a
                # stream changes nothing: results are committed in stream order below.
                window = 2 * self._slots(executor)
                sched.lookahead = window
                while not exhausted and len(pending) < window:
                    if deadline is not None and time.monotonic() >= deadline:
                        exhausted = True
                        sched.stop()
                        break
                    k = sched.next()
                    if k is None:
                        exhausted = sched.finished()
                        break
                    pending[executor.submit(run_unit, UnitTask(config, k, recipe=self._recipe(k),
                                                               stats=self._ask_stats(k), trace=k == traced))] = k
                    bisect.insort(submitted, k)
                if not pending and (exhausted or not sched.held):
                    break
                finished, _ = cf.wait(list(pending), timeout=0.5, return_when=cf.FIRST_COMPLETED)
                self._enforce_deadlines(executor, pending)
                broken: list[int] = []
                for fut in finished:
                    k = pending.pop(fut)
                    try:
                        buffer[k] = fut.result()
                    except cf.BrokenExecutor:  # a local pool's BrokenProcessPool, or WorkerLost
                        broken.append(k)
                if broken and not breaks_whole_pool(executor):
                    for k in sorted(broken):  # only these tasks' workers died
                        buffer[k] = self._isolate(k)
                elif broken:
                    broken.extend(pending.values())
                    pending.clear()
                    executor.shutdown(wait=False, cancel_futures=True)
                    self._requeue_shrinks_after_break()
                    for k in sorted(broken):
                        buffer[k] = self._isolate(k)
                    executor = self.executor_factory(self.workers)
                    self._watchdog.forget()
                    self._resubmit_shrinks(executor)
                # Commit in stream order: the report must not depend on who finished first.
                for k in [k for k in submitted if k in buffer]:
                    if sched.beyond(k):  # after a held stream the budget dropped: run on --resume
                        buffer.pop(k)
                        submitted.remove(k)
                        continue
                    if any(p < k for p in pending.values()) or sched.holds_below(k):
                        break
                    res = buffer.pop(k)
                    submitted.remove(k)
                    for rec in self._commit(res):
                        self._submit_shrink(executor, rec)
                self._collect_shrinks()
                self._report_progress()
            executor = self._finish_shrinks(executor)
            self._settle_divergence_files()
            self._record_plots(executor)
        except KeyboardInterrupt:  # Ctrl-C, or SIGTERM (errors.Terminated)
            interrupted = True
            raise
        finally:
            executor.shutdown(wait=not interrupted, cancel_futures=True)
            if interrupted:
                # Workers would run their streams to the end: stop them now.
                for child in multiprocessing.active_children():
                    if child.pid not in children_before:
                        child.terminate()
            if self._journal is not None:
                self._append_journal({"type": "elapsed", "elapsed": round(self.elapsed(), 3)})
                if self._journal is not None:
                    self._journal.close()
                    self._journal = None
            if not self._in_commit:  # --resume then reads the summary and no journal line
                self._write_summary()
            if self._lock is not None:
                os.close(self._lock)  # releases the flock
                self._lock = None
        if not self.committed:
            raise NothingToRun("no stream was run (is the budget too small?)")
        report = self.report()
        if self.corpus is not None and self.config.shard_count == 1:
            self.corpus.write_back(report)  # (a shard leaves that to the merge of the shards)
        return report

    def _replay_corpus(self, executor: cf.Executor) -> cf.Executor:
        """Replay the corpus's reproducers first (of a shard, its share; those not replayed
        before a --resume), under the watchdog.  Returns the executor to go on with (a fresh
        one after a worker died or hung: the entries then in flight are replayed again one
        by one)."""
        if self.corpus is None:
            return executor
        todo = [e for e in self.corpus.runnable(self.config.backends) if e.name not in self.corpus_runs]
        pending = {executor.submit(replay_corpus_entry, CorpusTask(self.config, e.stream, e.backend)): e
                   for e in todo}
        broken = []
        while pending:
            finished, _ = cf.wait(list(pending), timeout=0.5, return_when=cf.FIRST_COMPLETED)
            self._enforce_deadlines(executor, dict.fromkeys(pending, 0))
            for fut in finished:
                entry = pending.pop(fut)
                try:
                    self._record_corpus_run(entry.name, fut.result())
                except cf.BrokenExecutor:
                    broken.append(entry)
        if not broken:
            return executor
        executor.shutdown(wait=False, cancel_futures=True)
        for entry in broken:
            task = CorpusTask(self.config, entry.stream, entry.backend)
            outcome, fate = run_alone(self.executor_factory, task, replay_corpus_entry, self._limits[2])
            if fate != "ok":
                outcome = {"diverged": True, "signatures": [], "head_signature": None,
                           "note": f"the worker {'hung' if fate == 'hung' else 'died'} replaying it"}
            self._record_corpus_run(entry.name, outcome)
        self._watchdog.forget()
        return self.executor_factory(self.workers)

    def _record_plots(self, executor: cf.Executor) -> None:
        """Record the data the reports' plots draw (``difftest.plotdata``) in one worker,
        under the watchdog; a worker that dies or hangs leaves a note instead."""
        task = plotdata.make_task(self.config, self.records.values(), self.committed, self._culprits(),
                                  self._recipe, self._stream_stats, self._traced_runs)
        if task is None:
            return
        # Twice a stream's limit (the long stream, the coverage's streams generated again),
        # and a stream's allowance per reproducer traced.
        limit = 2 * self._limits[0] + len(task.reproducers) * unit_allowance(self.config)
        try:
            fut = executor.submit(plotdata.record, task)
        except cf.BrokenExecutor:  # the pool broke after the last shrink: a fresh worker
            found, fate = run_alone(self.executor_factory, task, plotdata.record, limit)
        else:
            found, fate = self._watched(executor, fut, limit)
        self.plots = found if fate == "ok" else plotdata.not_recorded(
            f"plot data not recorded: the worker recording it {'hung' if fate == 'hung' else 'died'}")
        atomic_write_text(self.out / plotdata.PLOTS_FILE, json.dumps(self.plots, allow_nan=False))

    def _watched(self, executor: cf.Executor, fut: cf.Future, limit: float) -> tuple[Any, str]:
        """Wait for one task under the watchdog: (result, "ok"), (None, "died") or (None,
        "hung") (its worker killed, or on a cluster abandoned)."""
        while not fut.done():
            cf.wait([fut], timeout=0.5)
            mark_running(executor)
            if self._watchdog.overdue({fut: limit}):
                self._watchdog.forget()
                kill_workers(executor, [fut])
                return None, "hung"
        try:
            return fut.result(), "ok"
        except cf.BrokenExecutor:
            return None, "died"

    def _record_corpus_run(self, name: str, outcome: dict[str, Any]) -> None:
        self.corpus_runs[name] = outcome
        self._append_journal({"type": "corpus", "entry": name, "outcome": outcome})

    def _submit_shrink(self, executor: cf.Executor, rec: SignatureRecord) -> None:
        if self.config.shrink_budget <= 0:
            self._finish_without_shrink(rec, "shrinking disabled")
            return
        if rec.first.get("explained_by"):
            # Not a harness divergence (the shrinker could not keep it): it joins the bug of
            # the divergence that explains it, whose reproducer stands for it.
            self._finish_without_shrink(rec, f"explained by {rec.first['explained_by']}: not minimised on its own")
            return
        culprits = self._culprits()
        backend = rec.first.get("backend")
        if backend in culprits:
            self._finish_without_shrink(rec, f"not shrunk: {backend} kills or hangs the worker")
            return
        attempts = self._shrink_attempts.get(rec.signature, 0)
        if attempts >= 2:
            self._finish_without_shrink(rec, "not shrunk: the worker died (or hung) twice while shrinking")
            return
        self._shrink_attempts[rec.signature] = attempts + 1
        task = ShrinkTask(self.config, rec.signature, rec.first_k, rec.first["backend"],
                          self._recipe(rec.first_k), self._shrink_backends(backend, culprits))
        self._shrinks[executor.submit(shrink_unit, task)] = rec.signature

    def _culprits(self) -> set[str]:
        return {name for death in self.worker_deaths for name in death["backends"]}

    def _shrink_backends(self, backend: Any, culprits: set[str]) -> tuple[str, ...] | None:
        """The lanes a signature's shrink runs: its backend and the reference (a signature
        is one backend against the contract), never a backend that killed a worker.  So a
        backend that dies or hangs leaves the others' reproducers to be shrunk without it."""
        names = tuple(n for n in self.config.backends
                      if (n == backend or n == self.config.reference) and n not in culprits)
        return names or None

    def _resubmit_shrinks(self, executor: cf.Executor) -> None:
        """Shrink again every signature left without a reproducer (its worker died)."""
        for rec in sorted(self.records.values(), key=lambda r: r.first_k):
            if rec.reproducer is None and rec.signature not in self._shrinks.values():
                self._submit_shrink(executor, rec)

    def _enforce_deadlines(self, executor: cf.Executor, pending: dict[cf.Future, int]) -> None:
        """The parent's watchdog: a task past its limit (a backend that ignores SIGALRM, or
        spins in C code) has its worker killed; what follows is a worker's death."""
        unit_limit, shrink_limit, _ = self._limits
        watched = {fut: unit_limit for fut in pending}
        watched.update({fut: shrink_limit for fut in self._shrinks})
        mark_running(executor)
        late = self._watchdog.overdue(watched)
        if late:
            kill_workers(executor, late)
            self._watchdog.forget()

    def _finish_shrinks(self, executor: cf.Executor) -> cf.Executor:
        """Wait for the shrinks in flight, under the watchdog; those whose worker died are
        run again on a fresh pool.  Returns the executor in use."""
        while True:
            if not self._shrinks:
                if all(rec.reproducer is not None for rec in self.records.values()):
                    return executor
                executor.shutdown(wait=False, cancel_futures=True)
                executor = self.executor_factory(self.workers)
                self._watchdog.forget()
                self._resubmit_shrinks(executor)
                continue
            cf.wait(list(self._shrinks), timeout=0.5, return_when=cf.FIRST_COMPLETED)
            self._collect_shrinks()
            self._enforce_deadlines(executor, {})

    def _finish_without_shrink(self, rec: SignatureRecord, why: str) -> None:
        """``rec``'s reproducer is its first stream, whole (generated once for all the
        signatures first seen in it: they are committed together; not at all when its
        worker sent it back)."""
        if self._whole_stream is None or self._whole_stream[0] != rec.first_k:
            ran = self._traced_runs.get(rec.first_k)  # the first stream came back with its run
            stream = ran.stream if ran is not None else make_stream(self.config, rec.first_k,
                                                                    self._recipe(rec.first_k))
            doc = streams.stream_to_json(stream)
            self._whole_stream = (rec.first_k, doc, len(stream))
            self._stream_text = (doc, streams.dumps_doc(doc))  # what _reproducer_text would make of doc
        _, rec.reproducer, rec.reproducer_ops = self._whole_stream
        rec.shrink_error = why
        self._write_corpus(rec)
        self._write_divergence(rec)

    def _collect_shrinks(self) -> None:
        """Take in the shrinks done (never waits).  One whose worker died is left without a
        reproducer, to be shrunk again on a fresh pool."""
        for fut in [f for f in self._shrinks if f.done()]:
            sig = self._shrinks.pop(fut)
            rec = self.records[sig]
            try:
                outcome = fut.result()
            except cf.BrokenExecutor:
                continue
            except Exception as exc:
                self._finish_without_shrink(rec, f"{type(exc).__name__}: {exc}")
                continue
            rec.reproducer = outcome.stream_json
            rec.reproducer_ops = outcome.ops
            rec.shrink_error = outcome.error
            rec.head = outcome.head
            self._write_corpus(rec)
            self._write_divergence(rec)

    def _requeue_shrinks_after_break(self) -> None:
        for fut in list(self._shrinks):
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                continue
            self._shrinks.pop(fut)

    def _isolate(self, k: int) -> UnitResult:
        """Stream k was in flight when a worker died (or was killed by the watchdog): run it
        alone to see whether it kills or hangs a worker, and if so with which backend."""
        unit_limit = self._limits[2]  # alone in its executor: no queue to wait in
        recipe = self._recipe(k)
        res, fate = run_alone(self.executor_factory, UnitTask(self.config, k, recipe=recipe), run_unit, unit_limit)
        if fate == "ok":
            return res
        whole = fate
        culprits: list[str] = []
        hung: list[str] = []
        for name in self.config.backends:
            _, solo = run_alone(self.executor_factory, UnitTask(self.config, k, (name,), recipe), run_unit, unit_limit)
            if solo != "ok":
                culprits.append(name)
                if solo == "hung":
                    hung.append(name)
        seed = unit_seed(self.config.seed, k)
        res = UnitResult(k=k, seed=seed, ops=0, elapsed=0.0, backends=())
        others = tuple(n for n in self.config.backends if n not in culprits)
        if culprits and others:
            # What the other backends find in this stream is not lost with the worker.
            rest, fate = run_alone(self.executor_factory, UnitTask(self.config, k, others, recipe), run_unit, unit_limit)
            if fate == "ok":
                res = rest
        for name in culprits or ["?"]:
            res.hits.update([_worker_death_hit(name if culprits else None, k, seed,
                                               name in hung if culprits else whole == "hung")])
        # Counted, and journaled, when the stream is committed (a --resume reads it back).
        res.death = {"backends": culprits, "killed_by_watchdog": hung}
        return res

    def _report_progress(self) -> None:
        if self.progress is None:
            return
        new = sum(1 for r in self.records.values() if match_known(r.signature, self.known) is None)
        kinds = Counter(r.first.get("kind") for r in self.records.values())
        self.progress({"streams": len(self.committed), "ops": self.ops, "elapsed": self.elapsed(),
                       "new": new, "known": len(self.records) - new, "crashes": kinds["crash"],
                       "hangs": kinds["hang"], "last_new": self.timeline[-1][0] if self.timeline else None,
                       "budget": self.budget})

    # -- the report ----------------------------------------------------------------------------------

    def report(self) -> dict[str, Any]:
        if self.corpus is not None:
            self.corpus.outcomes = dict(self.corpus_runs)
        return build_campaign_report(
            self.config, self.records, self.known, streams_run=len(self.committed), ops=self.ops,
            timing={"elapsed": round(self.elapsed(), 3),
                    "workers": self.workers_timeline[-1][1] if self.workers_timeline else self.workers,
                    "workers_timeline": [{"elapsed": t, "workers": n} for t, n in self.workers_timeline],
                    "executor": getattr(self.executor_factory, "label", "local"),
                    "stream_seconds": round(self.stream_seconds, 3),
                    "ops_per_second": round(self.ops / self.elapsed(), 1) if self.elapsed() > 0 else None,
                    "budget": self.budget,
                    "first_hits": [{"elapsed": round(t, 3), "streams": n, "signature": s}
                                   for t, n, s in self.timeline]},
            worker_deaths=self.worker_deaths, hit_sets=self.hit_sets, survival=self.survival,
            corpus=self.corpus, coverage=self.coverage.to_report(len(self.committed)), plots=self.plots,
        )


def bug_entries(records: dict[str, SignatureRecord], known: Sequence[KnownDivergence],
                hit_sets: Counter[frozenset[str]] | None = None) -> list[dict[str, Any]]:
    """``bugs`` of the report: the records grouped by head (``difftest.bugs``)."""
    ordered = sorted(records.values(), key=lambda r: (r.first_k, r.signature))
    out = []
    for bug in group([rec.member() for rec in ordered]):
        kd = match_bug(bug.head, bug.signatures, known)
        rep = representative(bug)
        first = min(bug.members, key=lambda m: (m.first_k, m.signature))
        out.append({
            "head": bug.head,
            "head_signature": bug.head_first.get("signature", bug.head),
            "backend": bug.head_first.get("backend", first.first["backend"]),
            "kind": bug.head_first.get("kind", first.first["kind"]),
            "members": bug.signatures,
            "count": streams_hit(bug.signatures, hit_sets) if hit_sets is not None
            else max(records[s].streams for s in bug.signatures),
            "events": sum(records[s].events for s in bug.signatures),
            "first_stream": {"index": first.first_k, "seed": first.first_seed},
            "known": kd is not None,
            "known_reason": kd.reason if kd else None,
            "status": "known" if kd is not None else "new",
            "reproducer": rep.reproducer,
            "reproducer_ops": rep.reproducer_ops,
            "reproducer_path": f"corpus/{slug(rep.signature)}.stream.json" if rep.reproducer else None,
            "reproducer_signature": rep.signature,
        })
    return out


def build_campaign_report(
    config: CampaignConfig,
    records: dict[str, SignatureRecord],
    known: Sequence[KnownDivergence],
    streams_run: int,
    ops: int,
    timing: dict[str, Any] | None = None,
    worker_deaths: Sequence[dict[str, Any]] = (),
    hit_sets: Counter[frozenset[str]] | None = None,
    survival: dict[str, Survival] | None = None,
    corpus: Any = None,
    coverage: dict[str, Any] | None = None,
    plots: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The ``difftest.report/1`` document of a campaign.  Everything but ``timing`` is a
    function of the configuration and the committed streams (and, with a corpus, of what
    its reproducers did)."""
    bugs = bug_entries(records, known, hit_sets)
    if corpus is not None:
        bugs = corpus.judge(bugs, known)
    bug_of = {sig: b for b in bugs for sig in b["members"]}
    entries = []
    for rec in sorted(records.values(), key=lambda r: (r.first_k, r.signature)):
        bug = bug_of[rec.signature]
        first = rec.first
        entries.append({
            "signature": rec.signature,
            "kind": first["kind"],
            "backend": first["backend"],
            "op_kind": first["op_kind"],
            "field": first["field"],
            "class": first["class"],
            "bug": bug["head"],
            "known": bug["known"],
            "known_reason": bug["known_reason"],
            "count": rec.streams,
            "events": rec.events,
            "first_stream": {"index": rec.first_k, "seed": rec.first_seed},
            "first": first,
            "reproducer": rec.reproducer,
            "reproducer_ops": rec.reproducer_ops,
            "reproducer_path": f"corpus/{slug(rec.signature)}.stream.json" if rec.reproducer else None,
            "shrink_note": rec.shrink_error,
        })
    seen = [e["signature"] for e in entries] + [b["head"] for b in bugs if b["status"] != "fixed"]
    no_longer = [{"signature": k.pattern, "reason": k.reason} for k in known
                 if k.concerns(config.backends) and not any(k.matches(s) for s in seen)]
    failing = [b for b in bugs if b["status"] in FAILING_STATUSES]
    doc = {
        "format": REPORT_FORMAT,
        "tool": {"name": "pmap-difftest", "version": __version__},
        "backends": list(config.backends),
        "reference": config.reference,
        "streams": streams_run,
        "ops": ops,
        "campaign": {
            "seed": config.seed,
            "generator": config.generator,
            "generator_options": dict(config.generator_options),
            "ops_per_stream": config.ops_per_stream,
            "phys_pages": config.phys_pages,
            "streams_requested": config.streams,
            "shard": f"{config.shard_index}/{config.shard_count}",
            "stream_timeout": config.stream_timeout,
            "shrink_budget": config.shrink_budget,
            "checkpoint_every": config.checkpoint_every,
            "invariants": config.invariants,
            "plugins": list(config.plugins),
            "feedback": config.feedback,
        },
        "summary": {
            "signatures": len(entries),
            "new": sum(1 for e in entries if not e["known"]),
            "known": sum(1 for e in entries if e["known"]),
            "bugs": sum(1 for b in bugs if b["status"] != "fixed"),
            "failing_bugs": len(failing),
            "known_bugs": sum(1 for b in bugs if b["status"] == "known"),
            "fixed_bugs": sum(1 for b in bugs if b["status"] == "fixed"),
        },
        "bugs": bugs,
        "divergences": entries,
        "survival": {name: s.to_json() for name, s in (survival or {}).items()},
        "no_longer_seen": no_longer,
        "worker_deaths": sorted(worker_deaths, key=lambda d: d["stream"]),  # not in the order they were met
    }
    if corpus is not None:
        doc["corpus"] = corpus.summary()
    if coverage is not None:
        doc["coverage"] = coverage
    if plots is not None:
        doc["plots"] = plots
    if timing is not None:
        doc["timing"] = timing
    return doc


def _read_plots(out: Path, strict: bool) -> dict[str, Any] | None:
    """``OUT/plots.json`` as the campaign wrote it (None: not written).  A damaged one is
    bad input when ``strict`` (read for a merge); a resumed campaign writes it anew."""
    from difftest.report_shape import plots_problem

    path = out / plotdata.PLOTS_FILE
    if not path.exists():
        return None
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        problem = plots_problem(doc, "plots")
    except (OSError, ValueError, RecursionError) as exc:
        problem = f"not readable JSON ({short(str(exc))})"
    if problem is None:
        return doc
    if strict:
        raise BadInput(f"{path}: {problem}")
    return None


def read_campaign_meta(path: Path) -> tuple[CampaignConfig, list[KnownDivergence]]:
    """The configuration and baseline a campaign directory was started with."""
    meta_path = Path(path) / "campaign.json"
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        config = CampaignConfig.from_json(meta["config"])
        known = [KnownDivergence(**k) for k in meta.get("known", [])]
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise BadInput(f"{path}: not a campaign directory ({meta_path.name}: {exc})") from None
    return config, known


@dataclass(frozen=True)
class CorpusUse:
    """The ``--corpus`` a campaign directory was started with: its path (None: none) and
    the corpus's state then (``Corpus.fingerprint``; None when not recorded)."""

    path: str | None
    entries: dict[str, str] | None


def campaign_corpus(path: Path) -> CorpusUse:
    """The ``--corpus`` of a campaign directory (``campaign.json``; read after
    ``read_campaign_meta``, which refuses a damaged one)."""
    meta_path = Path(path) / "campaign.json"
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        corpus, entries = meta.get("corpus"), meta.get("corpus_entries")
    except (OSError, ValueError, AttributeError) as exc:
        raise BadInput(f"{path}: not a campaign directory ({meta_path.name}: {short(str(exc))})") from None
    if not (corpus is None or isinstance(corpus, str)) or not (
            entries is None or isinstance(entries, dict) and all(isinstance(v, str) for v in entries.values())):
        raise BadInput(f"{meta_path}: 'corpus' or 'corpus_entries' is not what a campaign writes")
    return CorpusUse(corpus, entries)


def load_run_dir(path: Path) -> "Campaign":
    """Read a campaign directory back (read-only): config, records, committed streams, ops."""
    config, known = read_campaign_meta(path)
    return Campaign(config, Path(path), known, read_only=True)


def merge_runs(dirs: Sequence[Path], out: Path, corpus_dir: Path | None = None) -> dict[str, Any]:
    """Combine shard outputs into one report, equal to the unsharded run's; with a corpus
    (``corpus_dir``, or the one the shards were started with), judged against it with
    every shard's replays and written back to it, as the unsharded campaign does."""
    if not dirs:
        raise BadInput("merge needs at least one campaign directory")
    merged: dict[str, SignatureRecord] = {}
    streams_run = 0
    ops = 0
    base: CampaignConfig | None = None
    known: list[KnownDivergence] = []
    shards: dict[int, Path] = {}
    seen: set[int] = set()
    hit_sets: Counter[frozenset[str]] = Counter()
    survival: dict[str, Survival] = {}
    tally = CoverageTally()
    shard_plots: list[dict[str, Any] | None] = []
    owners: dict[str, int] = {}  # signature -> the shard whose first sighting (and reproducer) is kept
    deaths: list[dict[str, Any]] = []
    corpus_runs: dict[int, dict[str, dict[str, Any]]] = {}  # shard -> what replaying its share did
    for position, d in enumerate(dirs):
        camp = load_run_dir(Path(d))
        config, records, committed, n_ops = camp.config, camp.records, camp.committed, camp.ops
        corpus_runs[config.shard_index] = camp.corpus_runs
        hit_sets.update(camp.hit_sets)
        deaths.extend(camp.worker_deaths)
        shard_plots.append(camp.plots)
        for name, surv in camp.survival.items():
            survival.setdefault(name, Survival()).merge(surv)
        tally.add(camp.coverage)
        if base is None:
            base, known = config, camp.known
        _check_shard(Path(d), config, base, Path(dirs[0]), shards)
        shards[config.shard_index] = Path(d)
        twice = seen.intersection(committed)
        if twice:  # equal configs and distinct shards cannot share a stream; a copied journal can
            raise BadInput(f"{d}: stream {min(twice)} is also in another shard given")
        seen.update(committed)
        streams_run += len(committed)
        ops += n_ops
        for sig, rec in records.items():
            have = merged.get(sig)
            if have is None or rec.first_k < have.first_k:
                owners[sig] = position
            if have is None:
                merged[sig] = rec
                continue
            first = rec if rec.first_k < have.first_k else have
            merged[sig] = SignatureRecord(
                signature=sig, first_k=first.first_k, first_seed=first.first_seed, first=first.first,
                streams=have.streams + rec.streams, events=have.events + rec.events,
                reproducer=first.reproducer, reproducer_ops=first.reproducer_ops, shrink_error=first.shrink_error,
                head=first.head)
    assert base is not None
    corpus = _merge_corpus(shards, base.shard_count, corpus_dir, corpus_runs)
    missing = [i for i in range(base.shard_count) if i not in shards]
    config = CampaignConfig(**{**asdict(base), "shard_index": 0, "shard_count": 1,
                               "backends": base.backends, "plugins": base.plugins})
    out.mkdir(parents=True, exist_ok=True)
    (out / "corpus").mkdir(exist_ok=True)
    for rec in merged.values():
        if rec.reproducer is not None:
            atomic_write_text(out / "corpus" / f"{slug(rec.signature)}.stream.json",
                              streams.dumps(streams.stream_from_json(rec.reproducer)))
    # The merged report is the unsharded campaign's: config says shard 0/1.
    plots = plotdata.merge(shard_plots, plotdata.representative_stream(merged.values(), seen), owners)
    report = build_campaign_report(config, merged, known, streams_run, ops, worker_deaths=deaths, hit_sets=hit_sets,
                                   survival=survival, corpus=corpus, coverage=tally.to_report(streams_run),
                                   plots=plots)
    if corpus is not None and not missing:  # (lacking shards, it is not the campaign's verdict: merge again)
        corpus.write_back(report)
    if missing:  # not the unsharded campaign's report: say what it lacks
        report["campaign"]["shard"] = "+".join(str(i) for i in sorted(shards)) + f"/{base.shard_count}"
        report["campaign"]["shards_missing"] = missing
    atomic_write_text(out / "report.json", report_text(report))
    return report


def _merge_corpus(shards: dict[int, Path], shard_count: int, given: Path | None,
                  corpus_runs: dict[int, dict[str, dict[str, Any]]]) -> Corpus | None:
    """The corpus a merge judges against (None: the shards ran without one), its
    ``outcomes`` each entry's replay in the shard whose share it is (``shard_of``).  Bad
    input: shards with different corpora or different states of one, a corpus given to
    shards run without one, a corpus missing, damaged or changed since the shards read it."""
    uses = {i: campaign_corpus(d) for i, d in sorted(shards.items())}
    first, use = next(iter(uses.items()))
    for i, other in uses.items():
        if (other.path is None) != (use.path is None):
            with_, without = (shards[first], shards[i]) if use.path else (shards[i], shards[first])
            raise BadInput(f"{without}: started without --corpus, {with_} with one: not shards of one campaign")
        if given is None and other.path != use.path:
            raise BadInput(f"{shards[i]}: started with --corpus {other.path}, {shards[first]} with --corpus "
                           f"{use.path}: give merge --corpus DIR if they are copies of one corpus")
        change = changed_entry(use.entries, other.entries) if use.entries is not None and other.entries is not None \
            else None
        if change:
            raise BadInput(f"{shards[i]}: started from another state of the corpus than {shards[first]} ({change})")
    if use.path is None:
        if given is not None:
            raise BadInput(f"--corpus {given}: the shards were started without --corpus (they replayed none)")
        return None
    if shard_count == 1:  # a whole campaign: it judged its corpus and wrote it back itself
        if given is not None:
            raise BadInput(f"--corpus {given}: {shards[first]} is not a shard (it wrote its corpus back itself)")
        return None
    path = Path(given) if given is not None else Path(use.path)
    seen = next((u.entries for u in uses.values() if u.entries is not None), None)
    if not path.exists() and seen:
        raise BadInput(f"--corpus {path}: no such directory (the shards replayed a corpus of {len(seen)} "
                       f"entries there)")
    corpus = Corpus.open(path)
    change = None if seen is None else changed_entry(seen, corpus.fingerprint())
    if change:
        raise BadInput(f"--corpus {corpus.path}: {change} since the shards read it "
                       "(merged already? that merge's report judged it)")
    corpus.outcomes = {name: outcome for i, runs in corpus_runs.items() for name, outcome in runs.items()
                       if shard_of(name, shard_count) == i}
    return corpus


def _check_shard(d: Path, config: CampaignConfig, base: CampaignConfig, first: Path,
                 shards: dict[int, Path]) -> None:
    """``d`` is one more shard of ``base``'s campaign, not given before (BadInput naming it)."""
    if config.shard_count != base.shard_count:
        raise BadInput(f"{d}: shard {config.shard_index}/{config.shard_count} overlaps the shards of "
                       f"{first} (of {base.shard_count}): not the same split")
    mine, theirs = asdict(config), asdict(base)
    for name in mine:
        if name != "shard_index" and mine[name] != theirs[name]:
            raise BadInput(f"{d}: not a shard of the same campaign as {first} "
                           f"({name} {short(mine[name])} != {short(theirs[name])})")
    if config.shard_index in shards:
        raise BadInput(f"{d}: shard {config.shard_index}/{config.shard_count} given twice "
                       f"(also {shards[config.shard_index]})")

