"""What cache_status and corpus://stats say of the servers sharing the state folder: how
many serve this corpus, which one keeps the cache (engine/keeper.py), and whether this one
does."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from pydantic import BaseModel, Field

from corpus_cache.wording import plural

if TYPE_CHECKING:  # loaded with the engine, after the server answers (cli/main.py `_serve`)
    from corpus_cache.engine.keeper import Keeper


class SharingOut(BaseModel):
    instances: int = Field(description="servers serving this corpus from this state folder, "
                           "this one included")  # fmt: skip
    keeper_pid: int | None = Field(
        description="the process that keeps the cache (sends keep-warm, pre-warm and staged "
        "builds for all), if one does now"
    )
    keeper_since: str | None = Field(description="since when it keeps it")
    this_instance_keeps: bool = Field(description="whether this server is the keeper")
    pid: int = Field(description="this server's process")
    text: str


def sharing_out(keeper: Keeper | None) -> SharingOut:
    pid = os.getpid()
    standing = keeper.standing if keeper is not None else None
    if keeper is None:
        return SharingOut(
            instances=1, keeper_pid=pid, keeper_since=None, this_instance_keeps=True, pid=pid,
            text="This server keeps its own cache (not started as a server sharing a state "
            "folder).",
        )  # fmt: skip
    if standing is None or standing.lease is None:
        return SharingOut(
            instances=standing.instances if standing is not None else 1, keeper_pid=None,
            keeper_since=None, this_instance_keeps=False, pid=pid,
            text="No server keeps the cache at the moment (the state folder's lease cannot be "
            "read, or is being handed over): no keep-warm request is sent until one does.",
        )  # fmt: skip
    lease = standing.lease
    since = datetime.fromtimestamp(lease.since, UTC).isoformat(timespec="seconds")
    who = "this server" if standing.keeper else f"process {lease.pid}"
    return SharingOut(
        instances=standing.instances, keeper_pid=lease.pid, keeper_since=since,
        this_instance_keeps=standing.keeper, pid=pid,
        text=f"{plural(standing.instances, 'server')} share this cache; {who} keeps it warm "
        f"(since {since}){'' if standing.keeper else ': this one answers questions only'}.",
    )  # fmt: skip
