"""TrueConf users looked up by e-mail (`GET /api/v4/users?email=`), with a cache.

The API filters by substring, so the answer is searched for the exact address (case-insensitive). Found users
are cached for `user_cache_ttl`, unknown addresses (not TrueConf users: guests) for `user_cache_negative_ttl`.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from tcs_gateway.rest.http import RestClient

_MAX_PAGES = 20


@dataclass(frozen=True)
class TrueConfUser:
    id: str
    email: str
    display_name: str


class UserDirectory:
    def __init__(self, client: RestClient, ttl: float, negative_ttl: float) -> None:
        self.client = client
        self.ttl = ttl
        self.negative_ttl = negative_ttl
        self._cache: dict[str, tuple[float, TrueConfUser | None]] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self.lookups = 0

    async def by_email(self, email: str) -> TrueConfUser | None:
        key = email.strip().lower()
        cached = self._cache.get(key)
        if cached is not None and cached[0] > time.monotonic():
            return cached[1]
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            cached = self._cache.get(key)
            if cached is not None and cached[0] > time.monotonic():
                return cached[1]
            found = await self._lookup(key)
            lifetime = self.ttl if found is not None else self.negative_ttl
            self._cache[key] = (time.monotonic() + lifetime, found)
        self._locks.pop(key, None)
        return found

    async def _lookup(self, email: str) -> TrueConfUser | None:
        self.lookups += 1
        page = 1
        for _ in range(_MAX_PAGES):
            response = await self.client.request(
                "GET", "/users", route="/users", params={"email": email, "page_id": str(page), "page_size": "100"}
            )
            if response.status != 200 or not isinstance(response.body, dict):
                raise response.failure(f"looking up TrueConf user {email}")
            users = response.body.get("users")
            for user in users if isinstance(users, list) else []:
                if not isinstance(user, dict):
                    continue
                if str(user.get("email", "")).lower() == email and user.get("id"):
                    return TrueConfUser(
                        id=str(user["id"]),
                        email=email,
                        display_name=str(user.get("display_name") or user["id"]),
                    )
            next_page = response.body.get("next_page_id")
            if not isinstance(next_page, int) or next_page <= page:
                return None
            page = next_page
        return None
