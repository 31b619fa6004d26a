"""Mutation check of the scenario tests: does each test fail when the behaviour it names
is broken?

Each mutation is one small text replacement in one file of the package, located by a
distinctive snippet of today's code. For each mutation this script copies the project
(``onlineschema/``, ``tests/``, ``pyproject.toml``) to a scratch directory, applies the
breakage there (the package itself is never touched), runs the named tests with that copy
first on ``PYTHONPATH`` (the CLI subprocesses the tests start inherit it) and reports
``killed`` (a test failed, as it should) or ``survived`` (every test passed: the tests do
not see the breakage). A snippet that is not found exactly once stops the script with
"mutation target not found": the code moved, and the mutation must be updated rather than
silently pass.

    export PATH=/work/main/.ci/venv/bin:$PATH
    python scripts/mutations.py                 # every mutation
    python scripts/mutations.py --list          # what each one breaks
    python scripts/mutations.py --check         # every target still found? (no tests run)
    python scripts/mutations.py cursor_commit   # some of them
    python scripts/mutations.py --baseline      # the same tests, unmutated: must pass
    python scripts/mutations.py --tests-from 3e698d7   # the tests as they were then

Exit status: 0 when every mutation was killed (and, with --baseline, every baseline
passed), 1 otherwise.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Mutation:
    id: str
    path: str  #: file of the package, relative to the project root
    old: str  #: a distinctive snippet of today's code, found exactly once
    new: str  #: what it becomes
    breaks: str  #: the behaviour this breaks
    tests: tuple[str, ...]  #: the tests (pytest node ids) that must fail
    #: further (path, old, new) replacements, each also found exactly once
    also: tuple[tuple[str, str, str], ...] = ()


ENGINE = "onlineschema/backfill/engine.py"

CURSOR_FIRST_OLD = """            cur.execute(batch.statement)
            n = max(cur.rowcount, 0)
"""
CURSOR_FIRST_NEW = """            cur.execute("COMMIT")  # MUTATION: the cursor is saved before the batch's rows
            self.records.advance_chunk(
                cur,
                chunk.chunk,
                cursor=batch.cursor,
                rows=0,
                scanned=0.0,
                seconds=0.0,
                done=batch.last,
            )
            cur.execute("BEGIN")
            cur.execute(batch.statement)
            n = max(cur.rowcount, 0)
"""

#: the backfill as one UPDATE: one chunk (cut at start), one batch (the whole chunk)
ONE_STATEMENT = (
    "onlineschema/backfill/chunks.py",
    """            for a, b in split_range(lo, hi, n):""",
    """            for a, b in [(lo, hi)]:  # MUTATION: one chunk""",
)
ONE_BATCH = (
    ENGINE,
    """        width = max(1, math.ceil(size / density))""",
    """        width = 10**15  # MUTATION: the whole chunk at once""",
)

CRASH = "tests/test_crash.py::test_sigkill_mid_backfill_then_resume_applies_each_row_once"

MUTATIONS: list[Mutation] = [
    Mutation(
        id="cursor_commit",
        path=ENGINE,
        old="""            elapsed = time.monotonic() - t0
            self.records.advance_chunk(""",
        new="""            elapsed = time.monotonic() - t0
            cur.execute("COMMIT")  # MUTATION: the batch's rows commit before its cursor
            cur.execute("BEGIN")
            self.records.advance_chunk(""",
        breaks="a batch's rows are committed in a transaction of their own, before the"
        " chunk's cursor: a crash between the two applies the batch twice on resume",
        tests=(f"{CRASH}[cursor]",),
    ),
    Mutation(
        id="state_schema_before_preflight",
        path="onlineschema/executor/__init__.py",
        old="""        result = self._plan(changes)  # refuses bad input before any write
        self.store.ensure()
""",
        new="""        self.store.ensure()  # MUTATION: the state schema is created before the preflight
        result = self._plan(changes)
""",
        breaks="apply creates the state schema and its tables (DDL) before the preflight"
        " refuses bad input: a refused request changes the database",
        tests=("tests/test_bad_input.py::test_refused_before_any_ddl",),
    ),
    Mutation(
        id="vacuum_throttle_flaps",
        path="onlineschema/throttle.py",
        old="""    def clear(self, r: Reading, s: Limits) -> bool:
        return r.values.get("vacuums", 0) == 0
""",
        new="""    def clear(self, r: Reading, s: Limits) -> bool:
        return True  # MUTATION: released at the next poll, the VACUUM still running
""",
        breaks="pause_on_vacuum engages for one poll, then lets batches run while the"
        " VACUUM of the table still runs (engaged and released alternately)",
        tests=("tests/test_throttle.py::test_vacuum_of_the_table_pauses_the_backfill_when_asked",),
    ),
    Mutation(
        id="lock_guard_skipped",
        path="onlineschema/locks.py",
        old="""    def once() -> T:
        wait_outside_the_queue()
""",
        new="""    def once() -> T:
        # MUTATION: no wait outside the lock queue for long transactions
""",
        breaks="the lock guard never waits for a long transaction outside the lock queue:"
        " every attempt queues for its lock, in front of the application, for lock_timeout",
        tests=(
            "tests/test_concurrency.py"
            "::test_apply_waits_for_long_transaction_without_blocking_writers",
        ),
    ),
    Mutation(
        id="lock_timeout_ignored",
        path="onlineschema/executor/__init__.py",
        old="""        return f"{int(self.settings.lock_timeout * 1000)}ms", f"{int(stmt * 1000)}ms"
""",
        new="""        return "500ms", f"{int(stmt * 1000)}ms"  # MUTATION: the default, not the setting
""",
        breaks="DDL steps run under the default lock_timeout (500ms) whatever"
        " Settings.lock_timeout says: the application queues behind them for longer",
        tests=("tests/test_concurrency.py::test_attempts_that_queue_wait_at_most_lock_timeout",),
    ),
    Mutation(
        id="backfill_one_statement",
        path=ONE_STATEMENT[0],
        old=ONE_STATEMENT[1],
        new=ONE_STATEMENT[2],
        also=(ONE_BATCH,),
        breaks="the backfill is one UPDATE of the whole table (one chunk, one batch): its"
        " row locks make the application's updates wait for the whole fill",
        tests=("tests/test_concurrency.py::test_example_script_as_owner_while_application_writes",),
    ),
    Mutation(
        id="cursor_first",
        path=ENGINE,
        old=CURSOR_FIRST_OLD,
        new=CURSOR_FIRST_NEW,
        breaks="a batch's cursor is committed before its rows: a crash inside the batch's"
        " UPDATE skips those rows for good",
        tests=("tests/test_workers.py::test_sigkill_at_twenty_random_moments",),
    ),
    Mutation(
        id="cursor_first_alembic",
        path=ENGINE,
        old=CURSOR_FIRST_OLD,
        new=CURSOR_FIRST_NEW,
        breaks="as cursor_first, seen through `alembic upgrade` killed inside a batch",
        tests=(
            "tests/test_alembic.py"
            "::test_sigkill_mid_backfill_then_upgrade_again_finishes_exactly_once",
        ),
    ),
    Mutation(
        id="backfill_stale_copy",
        path="onlineschema/sql/batches.py",
        old="""            sql.SQL("{} = {}").format(sql.Identifier(c), sql.SQL(e)) for c, e in self.set""",
        new="""            sql.SQL("{} = (SELECT {} FROM {} AS stale WHERE stale.{} = {}.{})").format(
                sql.Identifier(c),
                sql.SQL(e),
                self.rel,
                sql.Identifier(self.key[0]),
                sql.Identifier(self.table),
                sql.Identifier(self.key[0]),
            )  # MUTATION: the value is read from the statement's snapshot
            for c, e in self.set""",
        also=(
            (
                "onlineschema/sql/batches.py",
                """        if self.only_null:
            out.append(""",
                """        if False:  # MUTATION: rows already written are copied again
            out.append(""",
            ),
        ),
        breaks="the backfill copies every row of its range (not only those still NULL)"
        " from its statement's snapshot: a row the application updated after the batch"
        " began is overwritten with the stale value, in both columns",
        tests=("tests/test_breaking.py::test_type_change_expand_abort_contract",),
    ),
    Mutation(
        id="index_build_not_concurrent",
        path="onlineschema/executor/__init__.py",
        old="""                (idx_lock,),
            )
            try:
                for stmt in step.statements:
                    cur.execute(stmt.encode())""",
        new="""                (idx_lock,),
            )
            try:
                for stmt in step.statements:  # MUTATION: not what the script shows
                    cur.execute(stmt.replace("CONCURRENTLY ", "").encode())""",
        breaks="the executor builds indexes without CONCURRENTLY (blocking writes) while"
        " the rendered script that squawk lints still says CONCURRENTLY",
        tests=(
            "tests/test_squawk.py::test_the_ddl_the_executor_runs_is_the_ddl_of_the_linted_script",
        ),
    ),
    Mutation(
        id="backfill_one_statement_volatile_default",
        path=ONE_STATEMENT[0],
        old=ONE_STATEMENT[1],
        new=ONE_STATEMENT[2],
        also=(ONE_BATCH,),
        breaks="as backfill_one_statement, seen through the volatile-default lifecycle",
        tests=(
            "tests/recipes/test_add_column.py::test_add_column_volatile_default_clock_timestamp",
        ),
    ),
    Mutation(
        id="workers_serialised",
        path=ENGINE,
        old="""        with w.conn.transaction(), w.conn.cursor() as cur:
            cur.execute(self.locals())
            row = self.records.lock_chunk(cur, chunk.chunk)
""",
        new="""        with w.conn.transaction(), w.conn.cursor() as cur:
            cur.execute(self.locals())
            cur.execute("SELECT pg_advisory_xact_lock(4242)")  # MUTATION: one batch at a time
            row = self.records.lock_chunk(cur, chunk.chunk)
""",
        breaks="a global lock lets only one worker's batch run at a time: the workers"
        " claim chunks but do not work in parallel",
        tests=("tests/test_workers.py::test_two_workers_each_row_once",),
    ),
    Mutation(
        id="cursor_first_takeover",
        path=ENGINE,
        old=CURSOR_FIRST_OLD,
        new=CURSOR_FIRST_NEW,
        breaks="as cursor_first, seen through one worker killed inside a batch and its"
        " chunk taken over",
        tests=(
            "tests/test_workers.py"
            "::test_a_worker_killed_inside_a_batch_leaves_its_partly_done_chunk_to_another",
        ),
    ),
]


def copy_project(dest: Path, tests_from: str | None = None) -> None:
    """The package and pyproject.toml as they are in the worktree; ``tests/`` too, or as
    it was at git revision ``tests_from`` (to show what the older tests missed)."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".mypy_cache", ".ruff_cache")
    shutil.copytree(ROOT / "onlineschema", dest / "onlineschema", ignore=ignore)
    shutil.copy2(ROOT / "pyproject.toml", dest / "pyproject.toml")
    if tests_from is None:
        shutil.copytree(ROOT / "tests", dest / "tests", ignore=ignore)
        return
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", tests_from, "tests"],
        capture_output=True,
        check=True,
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)


def apply_mutation(dest: Path, m: Mutation) -> None:
    for path, old, new in ((m.path, m.old, m.new), *m.also):
        target = dest / path
        if not target.is_file():
            raise SystemExit(f"{m.id}: mutation target not found: no file {path}")
        text = target.read_text()
        found = text.count(old)
        if found != 1:
            raise SystemExit(
                f"{m.id}: mutation target not found: the snippet occurs {found} times in"
                f" {path} (expected once); update the mutation to today's code:\n{old}"
            )
        target.write_text(text.replace(old, new))


def run_tests(dest: Path, tests: tuple[str, ...], log: Path) -> tuple[int, float]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(dest)
    env.pop("PYTEST_ADDOPTS", None)
    # the copy of the package is the one imported (not the editable install)
    check = subprocess.run(
        [sys.executable, "-c", "import onlineschema; print(onlineschema.__file__)"],
        cwd=dest,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    if not check.stdout.strip().startswith(str(dest)):
        raise SystemExit(f"the scratch copy is not the package imported: {check.stdout}")
    t0 = time.monotonic()
    with log.open("w") as out:
        rc = subprocess.run(
            [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests],
            cwd=dest,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            check=False,
        ).returncode
    return rc, time.monotonic() - t0


def last_line(log: Path) -> str:
    lines = [line for line in log.read_text().splitlines() if line.strip()]
    return lines[-1] if lines else ""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("ids", nargs="*", help="mutations to run (default: all)")
    parser.add_argument("--list", action="store_true", help="list the mutations and exit")
    parser.add_argument(
        "--check", action="store_true", help="only apply each mutation to a copy (no tests)"
    )
    parser.add_argument("--baseline", action="store_true", help="run the tests unmutated")
    parser.add_argument("--keep", action="store_true", help="keep the scratch directories")
    parser.add_argument(
        "--tests-from", metavar="REV", help="run the tests as they were at this git revision"
    )
    args = parser.parse_args()
    by_id = {m.id: m for m in MUTATIONS}
    unknown = [i for i in args.ids if i not in by_id]
    if unknown:
        parser.error(f"unknown mutation(s) {unknown}; known: {sorted(by_id)}")
    chosen = [by_id[i] for i in args.ids] if args.ids else MUTATIONS
    if args.list:
        for m in chosen:
            print(f"{m.id}: {m.breaks}\n    {m.path}; tests: {' '.join(m.tests)}")
        return 0
    if args.check:
        for m in chosen:
            with tempfile.TemporaryDirectory(prefix=f"mutation-{m.id}-") as scratch:
                copy_project(Path(scratch))
                apply_mutation(Path(scratch), m)  # exits on a target not found
            print(f"{m.id}: target found")
        return 0
    logs = Path(tempfile.mkdtemp(prefix="mutations-logs-"))
    rows: list[tuple[str, str, str, str]] = []
    ok = True
    for m in chosen:
        scratch = Path(tempfile.mkdtemp(prefix=f"mutation-{m.id}-"))
        try:
            copy_project(scratch, args.tests_from)
            if args.baseline:
                rc, secs = run_tests(scratch, m.tests, logs / f"{m.id}.baseline.log")
                verdict = "baseline passed" if rc == 0 else f"BASELINE FAILED (rc {rc})"
                ok &= rc == 0
                rows.append(
                    (m.id, verdict, f"{secs:.0f}s", last_line(logs / f"{m.id}.baseline.log"))
                )
                print(f"{m.id}: {verdict}", flush=True)
            apply_mutation(scratch, m)
            log = logs / f"{m.id}.log"
            rc, secs = run_tests(scratch, m.tests, log)
            # pytest: 1 = some test failed; 2-5 = interrupted, usage or collection errors
            if rc == 1:
                verdict = "killed"
            elif rc == 0:
                verdict = "SURVIVED"
            elif rc == 4 and args.tests_from:
                verdict = f"no such test at {args.tests_from}"
            else:
                verdict = f"ERROR (pytest exit {rc})"
            ok &= rc == 1 or (rc == 4 and bool(args.tests_from))
            rows.append((m.id, verdict, f"{secs:.0f}s", last_line(log)))
            print(f"{m.id}: {verdict} ({secs:.0f}s) {last_line(log)}", flush=True)
        finally:
            if not args.keep:
                shutil.rmtree(scratch, ignore_errors=True)
    print(f"\nlogs: {logs}\n")
    print("| mutation | result | time | pytest summary |")
    print("|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
