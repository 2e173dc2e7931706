"""Auth with real registry clients: ``docker login`` + ``docker pull`` and skopeo ``--creds``.

The daemon runs in-process, so every blocking client runs in a thread (the daemon answers on
this test's event loop).
"""

from __future__ import annotations

import asyncio

from envcache.service.config import Config, Token
from tests.fixtures.engines import SKOPEO
from tests.fixtures.processes import CommandFailed, run


async def test_docker_login_then_pull_works_and_is_required(make_daemon, dockerd, busybox_oci_layout) -> None:
    config = Config()
    config.auth.tokens = [Token("pull-only-token-0123456789abcdef0123456789", ["read"]), Token("push-token-0123456789abcdef0123456789", ["read", "write"])]
    url = await make_daemon(config)
    host = url.removeprefix("http://")
    image = f"{host}/base/busybox:1"

    def push(creds: str) -> None:
        run([SKOPEO, "copy", "--dest-tls-verify=false", "--dest-creds", creds, busybox_oci_layout.ref,
             f"docker://{image}"])

    try:  # a read-only token cannot push
        await asyncio.to_thread(push, "me:pull-only-token-0123456789abcdef0123456789")
        raise AssertionError("a read-only token pushed an image")
    except CommandFailed as exc:
        assert "denied" in str(exc).lower() or "403" in str(exc) or "lacks" in str(exc)
    await asyncio.to_thread(push, "me:push-token-0123456789abcdef0123456789")

    anonymous = await asyncio.to_thread(dockerd.docker, "pull", image, check=False)
    assert anonymous.returncode != 0 and ("unauthorized" in anonymous.stderr.lower() or "denied" in anonymous.stderr.lower())
    bad = await asyncio.to_thread(dockerd.docker, "login", host, "-u", "me", "--password-stdin",
                                  input="wrong-token", check=False)
    assert bad.returncode != 0
    login = await asyncio.to_thread(dockerd.docker, "login", host, "-u", "me", "--password-stdin",
                                    input="pull-only-token-0123456789abcdef0123456789")
    assert "Login Succeeded" in login.stdout
    await asyncio.to_thread(dockerd.docker, "pull", image)
    inspected = await asyncio.to_thread(dockerd.docker, "image", "inspect", "--format", "{{.Id}}", image)
    assert inspected.stdout.strip().startswith("sha256:")
    await asyncio.to_thread(dockerd.docker, "logout", host)
