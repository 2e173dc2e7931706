"""ensure through the real daemon with a real engine (dockerd), and pulling what it built.

Definitions here have only Dockerfile steps and environment variables on the tiny busybox base
(no python), so each build takes seconds even on the vfs storage driver.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import sys
from pathlib import Path

import aiohttp
import pytest
import yaml

from envcache.client.aio import AsyncClient
from envcache.service.config import Config

pytestmark = pytest.mark.engine


def busybox_definition(base: str, marker: str, gpu_marker: str | None = None) -> dict:
    definition = {"docker": {"base_dockerfile": f"FROM {base}\nRUN echo {marker} > /marker\n"},
                  "environment_variables": {"MARKER": marker}}
    if gpu_marker:
        definition["variants"] = {"gpu": {"base_dockerfile": f"FROM {base}\nRUN echo {gpu_marker} > /marker\n"}}
    return definition


@pytest.fixture
async def building_daemon(make_daemon, dockerd, busybox_image):
    """A daemon whose engine is the test dockerd; gzip so Docker 20.10 can pull what it built."""
    config = Config()
    config.build.engine, config.build.docker_host, config.build.compression = "docker", dockerd.host, "gzip"
    return await make_daemon(config)


async def test_first_ensure_builds_then_hits_even_renamed_and_with_no_engine(building_daemon, make_daemon,
                                                                              busybox_image, dockerd) -> None:
    url = building_daemon
    marker = secrets.token_hex(4)
    definition = {"name": "first", **busybox_definition(busybox_image, marker)}
    async with AsyncClient(url) as client:
        assert await client.resolve(definition, "cpu") is None
        lines: list[str] = []
        built = await client.ensure_image(definition, "cpu", on_log=lines.append)
        assert built["status"] == "built" and built["build"]["state"] == "succeeded"
        assert any(marker in line for line in lines)
        hit = await client.ensure(definition, "cpu")
        assert hit["status"] == "hit" and hit["image"]["digest"] == built["image"]["digest"]
        renamed = await client.ensure({**definition, "name": "another-name", "description": "labels only"}, "cpu")
        assert renamed["status"] == "hit" and renamed["image"]["key"] == built["image"]["key"]
        details = await client.image(built["image"]["key"])
        assert details["size"] > 0 and details["variant"] == "cpu" and details["last_used"] >= details["created"]
    builds = url.store.metadata.db.execute("select count(*) from builds").fetchone()[0]
    assert builds == 1
    # The same data under a daemon with no engine at all still answers the hit: a hit never
    # needs the engine (the base digest comes from the last-known table).
    no_engine = Config()
    no_engine.build.engine = "none"
    offline = await make_daemon(no_engine, data_dir=url.data_dir)
    async with AsyncClient(offline) as client:
        assert (await client.ensure(definition, "cpu"))["status"] == "hit"
    # And the image is a real image: docker pulls it from the daemon and runs it.
    image = built["image"]["image"]
    await asyncio.to_thread(dockerd.docker, "pull", image)
    ran = await asyncio.to_thread(dockerd.docker, "run", "--rm", "--network", "none", image, "cat", "/marker")
    assert ran.stdout.strip() == marker


async def test_32_concurrent_ensures_give_one_build_and_32_identical_answers(building_daemon, busybox_image) -> None:
    definition = busybox_definition(busybox_image, secrets.token_hex(4))
    async with AsyncClient(building_daemon) as client:
        answers = await asyncio.gather(*(client.ensure_image(definition, "cpu") for _ in range(32)))
    assert len({json.dumps(a["image"], sort_keys=True) for a in answers}) == 1
    assert len({a["build"]["id"] for a in answers}) == 1
    assert building_daemon.store.metadata.db.execute("select count(*) from builds").fetchone()[0] == 1
    async with aiohttp.ClientSession() as http, http.get(building_daemon + "/metrics") as resp:
        assert 'envcache_builds_total{outcome="built"} 1.0' in await resp.text()


async def test_warm_a_directory_with_hits_and_misses_in_both_variants(building_daemon, busybox_image,
                                                                      tmp_path: Path) -> None:
    defs = tmp_path / "envs"
    defs.mkdir()
    cached = busybox_definition(busybox_image, "cached", gpu_marker="cached-gpu")
    (defs / "cached.yml").write_text(yaml.safe_dump(cached))
    (defs / "fresh.json").write_text(json.dumps(busybox_definition(busybox_image, "fresh", gpu_marker="fresh-gpu")))
    async with AsyncClient(building_daemon) as client:
        await client.ensure_image(cached, "cpu")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "envcache.cli", "warm", str(defs), "--variants", "cpu,gpu", "--concurrency", "2",
        "--json", "--url", building_daemon, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    report = json.loads(out)
    outcomes = {(Path(r["label"]).name, r["variant"]): r["outcome"] for r in report["results"]}
    assert outcomes == {("cached.yml", "cpu"): "hit", ("cached.yml", "gpu"): "built",
                        ("fresh.json", "cpu"): "built", ("fresh.json", "gpu"): "built"}
    assert all(r["seconds"] >= 0 and r["image"]["image"] for r in report["results"])
    # A broken definition makes warm fail (non-zero) while still warming the rest.
    (defs / "broken.yml").write_text("docker: {base_imag: x}\n")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "envcache.cli", "warm", str(defs), "--variants", "cpu", "--url", building_daemon,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    assert proc.returncode == 1, err.decode()
    text = out.decode()
    assert "broken.yml" in text and "failed" in text and "2 hit" in text


async def test_cli_resolve_and_ensure(building_daemon, busybox_image, tmp_path: Path) -> None:
    path = tmp_path / "env.yml"
    path.write_text(yaml.safe_dump(busybox_definition(busybox_image, secrets.token_hex(4))))

    async def cli(*args: str) -> tuple[int, str, str]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "envcache.cli", *args, "--url", building_daemon,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await proc.communicate()
        return proc.returncode, out.decode(), err.decode()

    code, out, err = await cli("resolve", str(path), "--variant", "cpu")
    assert code == 3 and out == "" and "no cached image" in err
    code, out, err = await cli("ensure", str(path), "--variant", "cpu")
    assert code == 0, err
    image = out.strip().splitlines()[-1]
    assert image.startswith(building_daemon.removeprefix("http://") + "/envcache/env:") and "| " in err
    code, out, _ = await cli("resolve", str(path), "--variant", "cpu")
    assert code == 0 and out.strip() == image
    code, out, _ = await cli("images", "--json")
    assert code == 0 and image in [i["image"] for i in json.loads(out)]
    code, _, err = await cli("status")
    assert code == 0
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "envcache.cli", "status", "--url", "http://127.0.0.1:9", stderr=asyncio.subprocess.PIPE)
    _, err = await proc.communicate()
    assert proc.returncode == 1 and b"no envcache daemon answers" in err and b"envcache serve" in err


async def test_a_client_hanging_up_does_not_cancel_the_build_others_wait_for(building_daemon, busybox_image) -> None:
    # A slow step, so the build is certainly running when the first client goes away.
    definition = {"docker": {"base_dockerfile": f"FROM {busybox_image}\nRUN sleep 2 && echo slow > /marker\n"},
                  "environment_variables": {"RUN": secrets.token_hex(4)}}
    body = {"definition": definition, "variant": "cpu", "wait": True}
    async with aiohttp.ClientSession() as leaver:
        request = asyncio.create_task(leaver.post(building_daemon + "/api/v1/ensure", json=body))
        await asyncio.sleep(0.5)
        request.cancel()  # the connection closes with the build in progress
    async with AsyncClient(building_daemon) as client:
        answer = await client.ensure(definition, "cpu", wait=True)
    assert answer["status"] == "built" and answer["build"]["state"] == "succeeded"
    assert building_daemon.store.metadata.db.execute("select count(*) from builds").fetchone()[0] == 1


async def test_ensure_a_registered_environment_and_trace_the_build_back_to_it(building_daemon, busybox_image) -> None:
    async with AsyncClient(building_daemon) as client:
        await client.register_environment("traced", busybox_definition(busybox_image, secrets.token_hex(4)))
        started = await client.ensure(environment=("traced", 1), variant="cpu")
        assert started["status"] == "building"
        build_id = started["build"]["id"]
        lines = [line async for line in client.build_log(build_id)]
        assert lines and (await client.build(build_id))["state"] == "succeeded"
        used = await client.build_environment(build_id)
        assert (used["name"], used["version"]) == ("traced", 1)
        again = await client.ensure(environment="traced", variant="cpu")
        assert again["status"] == "hit"
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{building_daemon}/v2/{again['image']['repository']}/manifests/{again['image']['tag']}",
                            headers={"Accept": "application/vnd.oci.image.manifest.v1+json"}) as resp:
            manifest = await resp.json(content_type=None)
        layer = manifest["layers"][-1]["digest"]
        async with http.get(f"{building_daemon}/v2/{again['image']['repository']}/blobs/{layer}") as resp:
            size = len(await resp.read())
        async with http.get(building_daemon + "/metrics") as resp:
            metrics = await resp.text()
    served = next(float(line.split()[-1]) for line in metrics.splitlines()
                  if line.startswith("envcache_registry_bytes_served_total"))
    assert served >= size > 0
    # An indexed image whose tag is gone from the registry is a miss, never a dead reference.
    assert await building_daemon.store.manifests.delete_tag(again["image"]["repository"], again["image"]["tag"])
    async with AsyncClient(building_daemon) as client:
        assert await client.resolve(environment="traced", variant="cpu") is None
