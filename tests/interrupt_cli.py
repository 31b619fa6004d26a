"""Run the command line with SIGTERM landing at one exact instant: the Nth time a
statement whose text contains WORD is in flight on its connection (sent, its result not
read yet) while psycopg's own Python code runs around it.

``python tests/interrupt_cli.py WORD N -- ARGS...`` runs ``onlineschema ARGS...`` and
raises the CLI's ``Terminated`` there, as its SIGTERM handler would if the signal arrived
in that instant (a signal's handler runs in the main thread at the next line of Python,
wherever that is). psycopg cancels the statement when an interrupt arrives while it waits
on the socket, but not when it arrives in its code between sending a statement and
waiting for the result: there the statement keeps running and the connection answers
every later command with "another command is already in progress". A signal sent from
outside hits that instant only now and then; this hits it every time. Exits 97 when the
instant never came (the test would not test anything).
"""

from __future__ import annotations

import os
import sys
from types import FrameType
from typing import Any

import psycopg
from psycopg.pq import TransactionStatus

from onlineschema.cli import Terminated, main

PSYCOPG = os.path.dirname(psycopg.__file__) + os.sep


def arm(word: bytes, nth: int) -> dict[str, bool]:
    """Trace the main thread's psycopg frames; raise Terminated in the Nth statement
    containing ``word`` while it is in flight."""
    state = {"fired": False}
    seen: list[object] = []  # the statements counted (kept, so their ids stay theirs)

    def local(frame: FrameType, event: str, arg: Any) -> Any:
        if state["fired"] or event != "line":
            return local
        cursor = frame.f_locals.get("self")
        pgconn = getattr(cursor, "_pgconn", None)
        query = getattr(cursor, "_query", None)
        text = getattr(query, "query", None)
        if pgconn is None or not isinstance(text, bytes) or word not in text:
            return local
        if pgconn.transaction_status != TransactionStatus.ACTIVE:
            return local
        if not any(q is query for q in seen):
            seen.append(query)
        if len(seen) < nth:
            return local
        state["fired"] = True
        sys.settrace(None)
        raise Terminated()

    def calls(frame: FrameType, event: str, arg: Any) -> Any:
        if state["fired"]:
            return None
        return local if frame.f_code.co_filename.startswith(PSYCOPG) else None

    sys.settrace(calls)
    return state


if __name__ == "__main__":
    word, nth, sep, *args = sys.argv[1:]
    assert sep == "--", "usage: interrupt_cli.py WORD N -- ARGS..."
    fired = arm(word.encode(), int(nth))
    try:
        code = main(args)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    sys.settrace(None)
    if not fired["fired"]:
        print(f"interrupt_cli: no statement containing {word!r} was in flight", file=sys.stderr)
        code = 97
    sys.exit(code)
