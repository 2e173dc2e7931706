"""Spark packages: Maven coordinates → verified jar files.

Jars are fetched on the host (``file://`` and ``http(s)://`` repositories, tried in the listed
order) and copied into the image by the spark stage, so the build container needs neither
network nor credentials. Every jar is checked against the checksum file its repository publishes
next to it (``.sha256``, ``.sha512`` or ``.sha1``); a repository that publishes none is not
trusted. Only the listed coordinates are fetched — transitive dependencies are not resolved.
"""

from __future__ import annotations

import hashlib
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from envcache.builder.errors import BuildFailed
from envcache.definition.model import redact_url_credentials

MAVEN_CENTRAL = "https://repo1.maven.org/maven2"
_CHECKSUMS = (("sha256", "sha256"), ("sha512", "sha512"), ("sha1", "sha1"))


@dataclass
class FetchedJar:
    coordinate: str
    file_name: str
    sha256: str
    repository: str  # credentials removed

    def as_dict(self) -> dict[str, str]:
        return {"coordinate": self.coordinate, "file": self.file_name, "sha256": self.sha256,
                "repository": self.repository}


def artifact_path(group: str, artifact: str, version: str) -> str:
    return f"{group.replace('.', '/')}/{artifact}/{version}/{artifact}-{version}.jar"


async def _get(session: aiohttp.ClientSession, url: str) -> bytes | None:
    """The bytes at ``url``, or None when the repository does not have it."""
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme == "file":
        path = Path(urllib.parse.unquote(parsed.path))
        return path.read_bytes() if path.is_file() else None
    if parsed.scheme not in ("http", "https"):
        raise BuildFailed("spark", f"unsupported Maven repository scheme in {redact_url_credentials(url)}")
    headers = {}
    if parsed.username:
        headers["Authorization"] = aiohttp.encode_basic_auth(urllib.parse.unquote(parsed.username),
                                                             urllib.parse.unquote(parsed.password or ""))
        url = parsed._replace(netloc=(parsed.hostname or "") + (f":{parsed.port}" if parsed.port else "")).geturl()
    async with session.get(url, headers=headers) as resp:
        if resp.status == 404:
            return None
        if resp.status != 200:
            raise BuildFailed("spark", f"{redact_url_credentials(url)} answered HTTP {resp.status}")
        return await resp.read()


async def fetch_jars(packages: list[Any], repositories: list[str], dest: Path) -> list[FetchedJar]:
    """Fetch each package (``group``, ``artifact``, ``version``) into ``dest``, verified."""
    repos = [r.rstrip("/") for r in repositories] or [MAVEN_CENTRAL]
    dest.mkdir(parents=True, exist_ok=True)
    fetched: list[FetchedJar] = []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as session:
        for package in packages:
            coordinate = f"{package.group}:{package.artifact}:{package.version}"
            path = artifact_path(package.group, package.artifact, package.version)
            jar = await _fetch_one(session, coordinate, path, repos)
            if jar is None:
                where = ", ".join(redact_url_credentials(r) for r in repos)
                raise BuildFailed("spark", f"Spark package {coordinate} not found in any repository ({where})")
            data, repo = jar
            name = f"{package.group}_{package.artifact}-{package.version}.jar"
            (dest / name).write_bytes(data)
            fetched.append(FetchedJar(coordinate, name, hashlib.sha256(data).hexdigest(), redact_url_credentials(repo)))
    return fetched


async def _fetch_one(session: aiohttp.ClientSession, coordinate: str, path: str,
                     repos: list[str]) -> tuple[bytes, str] | None:
    for repo in repos:
        try:
            data = await _get(session, f"{repo}/{path}")
        except aiohttp.ClientError as exc:
            raise BuildFailed("spark", f"cannot reach {redact_url_credentials(repo)}: {exc}") from exc
        if data is None:
            continue
        for suffix, algorithm in _CHECKSUMS:
            published = await _get(session, f"{repo}/{path}.{suffix}")
            if published is None:
                continue
            expected = published.decode("ascii", "replace").split()[0].strip().lower() if published.strip() else ""
            actual = hashlib.new(algorithm, data).hexdigest()
            if expected != actual:
                raise BuildFailed("spark", f"checksum mismatch for {coordinate} from {redact_url_credentials(repo)}: "
                                           f"{algorithm} is {actual}, the repository says {expected or '(empty)'}")
            return data, repo
        raise BuildFailed("spark", f"{redact_url_credentials(repo)} publishes no checksum (.sha256/.sha512/.sha1) "
                                   f"for {coordinate}; refusing an unverified jar")
    return None
