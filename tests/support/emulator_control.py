"""The emulator's /_emulator/ control endpoints, for tests."""

from __future__ import annotations

from typing import Any

import httpx2


class Control:
    """The emulator's /_emulator/ endpoints."""

    def __init__(self, base_url: str) -> None:
        self.http = httpx2.Client(base_url=base_url, timeout=10)

    def post(self, path: str, body: dict[str, Any] | None = None) -> Any:
        response = self.http.post(f"/_emulator/{path}", json=body or {})
        response.raise_for_status()
        return response.json()

    def freeze(self, at: float = 1_800_000_000.0) -> None:
        self.post("clock", {"frozen": True, "set": at})

    def advance(self, seconds: float) -> None:
        self.post("clock", {"advance": seconds})

    def fault(self, **fault: Any) -> None:
        self.post("faults", fault)

    def limits(self, **body: Any) -> dict[str, Any]:
        """Replace the rate limits (`{}`: none); the answer is GET /_emulator/limits."""
        described: dict[str, Any] = self.post("limits", body)
        return described

    def latency(self, **body: Any) -> dict[str, Any]:
        described: dict[str, Any] = self.post("latency", body)
        return described

    def log(self, bodies: bool = False) -> list[dict[str, Any]]:
        params = {"bodies": "1" if bodies else "0", "limit": "1000"}
        requests: list[dict[str, Any]] = self.http.get("/_emulator/log", params=params).json()[
            "requests"
        ]
        return requests

    def cache(self, api_key: str = "test-key") -> list[dict[str, Any]]:
        entries: list[dict[str, Any]] = self.http.get(
            "/_emulator/cache", headers={"x-api-key": api_key}
        ).json()["entries"]
        return entries
