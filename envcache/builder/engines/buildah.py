"""buildah, daemonless, driven as a subprocess.

``buildah bud`` without ``--layers`` commits one layer per Dockerfile, which is exactly one
layer per envcache stage. ``--isolation chroot`` is what works in unprivileged sandboxes and
CI runners (the OCI runtime cannot set cgroups/rlimits there). Storage root, run root and
driver are configurable so the daemon (and each test session) can keep its own image store.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import secrets
import shutil
import signal
import tempfile
from collections.abc import Sequence
from pathlib import Path

from envcache.builder.engines.base import Engine, ExportedImage, ImageInfo, LogFn, LogTail, Mount, RunResult
from envcache.builder.errors import BuildFailed, EngineUnavailable
from envcache.builder.keys import SOURCE_DATE_EPOCH
from envcache.oci import RegistryLogin


def _is_loopback_registry(ref: str) -> bool:
    host = ref.split("/", 1)[0] if "/" in ref else ""
    return host.split(":")[0] in {"127.0.0.1", "localhost", "[::1]"}


async def _stop(proc: asyncio.subprocess.Process, grace: float = 15) -> None:
    """SIGTERM first, so buildah removes its working container; SIGKILL the whole group if it
    does not exit in time (a RUN step's children included)."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, None)):
        try:
            os.killpg(proc.pid, sig) if sig == signal.SIGKILL else proc.send_signal(sig)
        except ProcessLookupError:
            return
        try:
            await asyncio.wait_for(proc.wait(), wait)
            break
        except TimeoutError:
            continue
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # leftovers of the RUN step (sleep, pip…)
    except ProcessLookupError:
        pass


class BuildahEngine(Engine):
    name = "buildah"

    def __init__(self, root: Path | None = None, runroot: Path | None = None, storage_driver: str = "vfs",
                 isolation: str = "chroot", binary: str = "buildah") -> None:
        self.root = root
        self.runroot = runroot
        self.storage_driver = storage_driver
        self.isolation = isolation
        self.binary = shutil.which(binary) or binary
        self._version: str | None = None

    def _global_args(self) -> list[str]:
        args = [self.binary, "--storage-driver", self.storage_driver]
        if self.root is not None:
            args += ["--root", str(self.root)]
        if self.runroot is not None:
            args += ["--runroot", str(self.runroot)]
        return args

    async def _run(self, args: Sequence[str], tail: LogTail | None = None) -> tuple[int, str]:
        """Run buildah with ``args``; stream merged output into ``tail`` (when given) and return
        (exit status, output). Cancellation kills the whole process group, so a RUN step's
        children die with it."""
        if not shutil.which(self.binary):
            raise EngineUnavailable("buildah is not installed (apt-get install buildah)")
        proc = await asyncio.create_subprocess_exec(
            *self._global_args(), *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            stdin=asyncio.subprocess.DEVNULL, start_new_session=True,
        )
        chunks: list[str] = []
        try:
            assert proc.stdout is not None
            async for raw in proc.stdout:
                text = raw.decode("utf-8", "replace")
                if tail is not None:
                    tail.feed(text)
                else:
                    chunks.append(text)
            return await proc.wait(), "".join(chunks)
        except BaseException:
            if proc.returncode is None:
                await asyncio.shield(_stop(proc))
            raise

    async def version(self) -> str:
        # Asked before every build: a subprocess each time would cost more than the answer is
        # worth (the binary is looked up again on every detection anyway).
        if self._version is None:
            status, out = await self._run(["version", "--json"])
            if status != 0:
                raise EngineUnavailable(f"buildah does not work here: `buildah version` exited {status}: "
                                        f"{out.strip()[-300:]}")
            try:
                self._version = str(json.loads(out)["version"])
            except (ValueError, KeyError, TypeError):
                self._version = "unknown"
        return self._version

    async def inspect(self, ref: str) -> ImageInfo | None:
        status, out = await self._run(["inspect", "--type", "image", ref])
        if status != 0:
            return None
        data = json.loads(out)
        image_id = data["FromImageID"]
        config = (data.get("OCIv1") or {}).get("config") or {}
        return ImageInfo(id=image_id if image_id.startswith("sha256:") else f"sha256:{image_id}", config=config)

    async def pull(self, ref: str, log: LogFn, login: RegistryLogin | None = None) -> ImageInfo:
        tail = LogTail(log)
        tail.line(f"pulling {ref}")
        args = ["pull", "--quiet"]
        if _is_loopback_registry(ref):
            args.append("--tls-verify=false")
        with tempfile.TemporaryDirectory(prefix="envcache-auth-") as private:
            if login is not None:
                # An auth file readable by us only, gone after the pull: ``--creds`` would put the
                # password on buildah's command line, where any user can read it.
                auth = base64.b64encode(f"{login.username}:{login.password}".encode()).decode()
                authfile = Path(private) / "auth.json"
                authfile.write_text(json.dumps({"auths": {login.host: {"auth": auth}}}))
                args += ["--authfile", str(authfile)]
            status, _ = await self._run([*args, ref], tail)
        if status != 0:
            raise BuildFailed("base", f"cannot pull base image {ref}", tail.text())
        return await self._pulled(ref, tail)

    async def build(self, context_dir: Path, tag: str, *, network: bool,
                    log: LogFn, step: str, display: dict[str, str] | None = None) -> str:
        tail = LogTail(log, display)
        # --timestamp: every file of the committed layer, and the config, at SOURCE_DATE_EPOCH.
        args = ["bud", "--isolation", self.isolation, "--format", "oci", "--pull=false",
                "--timestamp", str(SOURCE_DATE_EPOCH), "-f", str(context_dir / "Dockerfile"), "-t", tag]
        # chroot isolation always shares the host's network namespace (buildah refuses any
        # other setting); the other isolations get the network only when a stage needs it.
        if self.isolation != "chroot":
            args += ["--network", "host" if network else "none"]
        status, _ = await self._run([*args, str(context_dir)], tail)
        if status != 0:
            raise BuildFailed(step, f"buildah bud exited with status {status}", tail.text())
        info = await self.inspect(tag)
        if info is None:
            raise BuildFailed(step, "buildah finished without producing the image", tail.text())
        tail.flush()
        return info.id

    async def run(self, image: str, command: list[str], *, network: bool, log: LogFn, step: str) -> None:
        tail = LogTail(log)
        # Named by us: buildah's output may end with a warning line rather than the name.
        container = f"envcache-run-{secrets.token_hex(8)}"
        status, out = await self._run(["from", "--pull=false", "--quiet", "--name", container, image])
        if status != 0:
            raise BuildFailed(step, f"cannot start a container of {image}", out)
        try:
            # chroot isolation shares the host network (buildah refuses any other setting).
            args = ["run", "--isolation", self.isolation]
            if self.isolation != "chroot":
                args += ["--network", "host" if network else "none"]
            status, _ = await self._run([*args, container, "--", *command], tail)
        finally:
            await asyncio.shield(self._run(["rm", container]))
        if status != 0:
            raise BuildFailed(step, f"the step exited with status {status}", tail.text())
        tail.flush()

    async def export(self, ref: str, dest_dir: Path) -> ExportedImage:
        layout = dest_dir / "oci"
        tail = LogTail(lambda line: None)
        status, _ = await self._run(["push", "--quiet", "--disable-compression", ref, f"oci:{layout}"], tail)
        if status != 0:
            raise BuildFailed("ingest", f"buildah could not export {ref}", tail.text())
        return ExportedImage("oci", layout)

    async def load(self, archive: Path, tag: str) -> None:
        tail = LogTail(lambda line: None)
        status, _ = await self._run(["pull", "--quiet", f"docker-archive:{archive}"], tail)
        image_id = tail.text().strip().splitlines()[-1] if status == 0 and tail.text().strip() else ""
        if status != 0 or (await self._run(["tag", image_id, tag]))[0] != 0:
            raise BuildFailed("load", f"buildah could not load {tag}", tail.text())

    async def tag(self, ref: str, tag: str) -> None:
        status, out = await self._run(["tag", ref, tag])
        if status != 0:
            raise BuildFailed("load", f"buildah could not tag {ref} as {tag}", out)

    async def remove(self, ref: str) -> None:
        await self._run(["rmi", ref])

    async def run_mounted(self, image: str, argv: list[str], *, workdir: str, mounts: list[Mount],
                          env: dict[str, str], user: str | None, network: bool, labels: dict[str, str], log: LogFn,
                          timeout: float | None = None) -> RunResult:
        """``buildah from`` → ``buildah run -v …`` → ``buildah rm``. A working container has no
        labels; under chroot isolation the network cannot be taken away (buildah shares the
        host's), so ``network`` only applies to the other isolations."""
        tail = LogTail(log)
        status, out = await self._run(["from", "--pull=false", "--quiet", image])
        if status != 0:
            raise EngineUnavailable(f"buildah could not start a container of {image}: {out.strip()[-500:]}")
        container = out.strip().splitlines()[-1]
        try:
            args = ["run", "--isolation", self.isolation, "--workingdir", workdir]
            if self.isolation != "chroot":
                args += ["--network", "host" if network else "none"]
            if user:
                args += ["--user", user]
            for mount in mounts:
                args += ["-v", f"{mount.source}:{mount.target}:{'ro' if mount.read_only else 'rw'}"]
            for key, value in env.items():
                args += ["--env", f"{key}={value}"]
            async with asyncio.timeout(timeout):
                status, _ = await self._run([*args, container, "--", *argv], tail)
            return RunResult(status, tail.text())
        finally:
            await asyncio.shield(self._run(["rm", container]))
