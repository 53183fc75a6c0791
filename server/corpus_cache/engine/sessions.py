"""Conversations: follow-up questions that reuse one cached corpus prefix.

A session is pinned, at its first question, to the corpus (snapshot, plan) and the shard
that question was answered from, and to the anchors that request marked. Follow-ups send
that same prefix, then the conversation so far; so they read the corpus from the cache even
after the folder changed and a refresh swapped in a new snapshot (a session sees the
documents as they were when it started; start a new session to see edits).

Sessions belong to the MCP connection that started them (their `owner`: owners.py says
what identifies one): a session is found by its owner and its id together, so naming
another connection's id is naming an unknown one, which starts a session of one's own.
An owner that stands for several clients that cannot be told apart (`SHARED`: one bearer
token, or 2026-era requests that carry no connection) gets generated ids only: an id a
client names is never taken as is there, so the only way into such a session is the
unguessable id its first answer returned.

Sessions are held in memory only: they expire after an idle time, the oldest is evicted
beyond a number of sessions, and a session keeps at most a number of turns and of tokens,
dropping its oldest turns (and saying so) beyond them. The trimming rule is pure.
"""

from __future__ import annotations

import re
import secrets
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import anyio

from corpus_cache.errors import InvalidArgumentError

NEW = "new"  # `session="new"`: start a session with a generated id
LOCAL = "local"  # the owner of sessions started in this process without MCP (the CLI, tests)
SHARED = "shared:"  # prefix of owners that several clients may share (see above)
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,99}$")

P = TypeVar("P")


@dataclass(frozen=True)
class Turn:
    """One question of a session and the text of its answer, as sent back to the API."""

    question: str
    answer: str
    tokens: int  # estimated: the answer's output tokens plus the question's

    @property
    def exchange(self) -> tuple[str, str]:
        return (self.question, self.answer)


def estimate_tokens(text: str) -> int:
    """A cautious token estimate for text never counted (about 3 characters a token)."""
    return len(text) // 3 + 1


def trim_turns(
    turns: Sequence[Turn], question_tokens: int, *, max_turns: int, max_tokens: int
) -> tuple[tuple[Turn, ...], int]:
    """The most recent turns that leave room for one more question within `max_turns`
    (the new question counted) and `max_tokens`, and how many older turns were dropped."""
    kept = list(turns)
    while kept and (
        len(kept) + 1 > max_turns or sum(t.tokens for t in kept) + question_tokens > max_tokens
    ):
        kept.pop(0)
    return tuple(kept), len(turns) - len(kept)


@dataclass
class Session(Generic[P]):
    """`pin`: what the session is bound to (the engine's corpus, shard and anchors)."""

    id: str
    pin: P
    last_used: float
    owner: str = LOCAL
    turns: list[Turn] = field(default_factory=list)
    dropped: int = 0  # turns dropped so far to stay within the bounds
    lock: anyio.Lock = field(default_factory=anyio.Lock, repr=False)


class Sessions(Generic[P]):
    """The live sessions, most recently used last."""

    def __init__(
        self,
        *,
        idle_seconds: float,
        max_sessions: int,
        clock: Callable[[], float],
    ) -> None:
        self.idle_seconds = idle_seconds
        self.max_sessions = max_sessions
        self.clock = clock
        self._live: OrderedDict[tuple[str, str], Session[P]] = OrderedDict()

    def __len__(self) -> int:
        self._expire(self.clock())
        return len(self._live)

    @staticmethod
    def check_id(session_id: str) -> str:
        session_id = session_id.strip()
        if session_id == NEW:
            return session_id
        if not _ID.match(session_id):
            raise InvalidArgumentError(
                "session must be 'new' or an id of 1 to 100 letters, digits, '_', '.', ':' "
                "or '-' (starting with a letter or digit)"
            )
        return session_id

    def get(self, session_id: str, *, owner: str = LOCAL) -> Session[P] | None:
        """`owner`'s live session of this id, if any; marks it used. Another owner's
        session of the same id is not found."""
        now = self.clock()
        self._expire(now)
        key = (owner, session_id)
        found = self._live.get(key)
        if found is not None:
            found.last_used = now
            self._live.move_to_end(key)
        return found

    def start(self, session_id: str, pin: P, *, owner: str = LOCAL) -> Session[P]:
        """A new session of `owner` (`session_id` "new": with a generated id), evicting the
        least recently used beyond the bound."""
        now = self.clock()
        self._expire(now)
        if session_id == NEW or owner.startswith(SHARED):
            session_id = "s-" + secrets.token_urlsafe(16)
        session = Session(session_id, pin, now, owner=owner)
        key = (owner, session_id)
        self._live[key] = session
        self._live.move_to_end(key)
        while len(self._live) > self.max_sessions:
            self._live.popitem(last=False)
        return session

    def _expire(self, now: float) -> None:
        for key in [k for k, s in self._live.items() if now - s.last_used > self.idle_seconds]:
            del self._live[key]
