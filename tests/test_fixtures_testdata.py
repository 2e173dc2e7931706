"""Proof that the local conda channel and Maven repository work with real clients/formats."""

from __future__ import annotations

import hashlib
import json
import subprocess
import xml.etree.ElementTree as ET
import zipfile
from pathlib import Path

import rattler

from tests.fixtures.testdata import MAVEN_CHECKSUMS, CondaChannel, MavenRepo

POM_NS = {"m": "http://maven.apache.org/POM/4.0.0"}


async def _solve_and_install(channel: CondaChannel, specs: list[str], prefix: Path, cache: Path) -> dict[str, str]:
    records = await rattler.solve([channel.url], specs, platforms=[channel.platform_subdir, "noarch"])
    await rattler.install(records, prefix, cache_dir=cache, show_progress=False)
    return {r.name.normalized: str(r.version) for r in records}


async def test_rattler_solves_and_installs_from_channel(conda_channel: CondaChannel, tmp_path: Path) -> None:
    prefix = tmp_path / "env"
    solved = await _solve_and_install(conda_channel, ["envcache-tool"], prefix, tmp_path / "pkgs")
    # the dependency chain crosses subdirs (platform -> noarch) and picks the newest data
    assert solved == {"envcache-tool": "2.0.0", "envcache-hello": "1.0.0", "envcache-data": "0.2.0"}
    out = subprocess.run([prefix / "bin" / "envcache-tool"], capture_output=True, text=True, check=True).stdout
    assert out == "envcache-tool 2.0.0\nhello from a conda package\n"
    assert (prefix / "share" / "envcache-data" / "version.txt").read_text() == "0.2.0\n"
    assert len(list((prefix / "conda-meta").glob("*.json"))) == 3


async def test_rattler_installs_the_tar_bz2_format_too(conda_channel: CondaChannel, tmp_path: Path) -> None:
    prefix = tmp_path / "env"
    solved = await _solve_and_install(conda_channel, ["envcache-data 0.1.*"], prefix, tmp_path / "pkgs")
    assert solved == {"envcache-data": "0.1.0"}
    assert (prefix / "share" / "envcache-data" / "version.txt").read_text() == "0.1.0\n"


def test_conda_channel_repodata_lists_every_package(conda_channel: CondaChannel) -> None:
    listed = set()
    for subdir in ("noarch", conda_channel.platform_subdir):
        repodata = json.loads((conda_channel.path / subdir / "repodata.json").read_text())
        for key in ("packages", "packages.conda"):
            for fn, record in repodata.get(key, {}).items():
                data = (conda_channel.path / subdir / fn).read_bytes()
                assert record["sha256"] == hashlib.sha256(data).hexdigest()
                listed.add(fn)
    assert listed == {p.filename for p in conda_channel.packages}


def test_maven_repo_files_and_checksums(maven_repo: MavenRepo) -> None:
    assert maven_repo.url.startswith("file:///")
    for art in maven_repo.artifacts:
        for ext in ("jar", "pom"):
            data = maven_repo.file(art, ext).read_bytes()
            for algo in MAVEN_CHECKSUMS:
                assert maven_repo.file(art, f"{ext}.{algo}").read_text() == hashlib.new(algo, data).hexdigest()
        with zipfile.ZipFile(maven_repo.file(art, "jar")) as jar:
            assert jar.testzip() is None
            assert f"Implementation-Version: {art.version}" in jar.read("META-INF/MANIFEST.MF").decode()
        pom = ET.parse(maven_repo.file(art, "pom")).getroot()
        assert pom.findtext("m:version", namespaces=POM_NS) == art.version
        deps = [
            (d.findtext("m:groupId", namespaces=POM_NS), d.findtext("m:artifactId", namespaces=POM_NS),
             d.findtext("m:version", namespaces=POM_NS))
            for d in pom.iterfind("m:dependencies/m:dependency", POM_NS)
        ]
        assert tuple(deps) == art.dependencies
    app = maven_repo.artifact("com.example.envcache:envcache-app:1.2.0")
    assert app.dependencies == (("com.example.envcache", "envcache-core", "1.0.0"),)


def test_maven_metadata_lists_versions(maven_repo: MavenRepo) -> None:
    meta_path = maven_repo.path / "com/example/envcache/envcache-core/maven-metadata.xml"
    meta = ET.parse(meta_path).getroot()
    assert [v.text for v in meta.iterfind("versioning/versions/version")] == ["0.9.0", "1.0.0"]
    assert meta.findtext("versioning/release") == "1.0.0"
    sha1 = meta_path.with_name("maven-metadata.xml.sha1").read_text()
    assert sha1 == hashlib.sha1(meta_path.read_bytes()).hexdigest()
