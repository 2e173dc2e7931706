"""envcache's pip step, run *inside the image* by the image's own Python (never imported by envcache).

The builder serves this file, the requirements and the host's CA bundle from its loopback helper
(a random port and token, alive for one build), and the image runs::

    "$PY" -c 'import sys, urllib.request as r; exec(r.urlopen(sys.argv[1] + "/pip_step.py").read())' \
        HELPER MODE EPOCH "$PY"

``resolve`` (in a throw-away container of the parent image): ``pip install --dry-run --report``
resolves the requirements as this image would install them, and the report goes back to the
helper — the builder turns it into the pip part of the lock. ``install`` (the pip stage's RUN):
installs exactly the lock's requirement lines (``--no-deps``, hashes) and reports what pip
installed, so the builder can check it is the lock; the lock is written to
``/opt/envcache/lock/pip.json``. The layer is made reproducible here, at its source: bytecode is
compiled with unchecked-hash invalidation (a ``.pyc`` then holds no timestamp), and every path
the step created or changed gets the mtime ``EPOCH`` (SOURCE_DATE_EPOCH) — see README
"Reproducible layers". Only the standard library, and nothing newer than Python 3.6 needs.
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.request

LOCK_DIR = "/opt/envcache/lock"
# The private wheels the RUN line fetched for pip (envcache.builder.stages.pip.WHEEL_DIR).
WHEELS = "/tmp/envcache-wheels"
# Mount points and files the engine bind-mounts into a RUN container: never part of the layer.
SKIP = ("/proc", "/sys", "/dev", "/etc/hosts", "/etc/hostname", "/etc/resolv.conf")


def fetch(url):
    with urllib.request.urlopen(url) as answer:
        return answer.read()


def send(url, data):
    request = urllib.request.Request(url, data=json.dumps(data).encode(), method="PUT")
    with urllib.request.urlopen(request) as answer:
        answer.read()


def reduced(report):
    """The report without the packages' long metadata: what the lock needs, small to send."""
    keep = ("download_info", "is_direct", "requested")
    return {"pip_version": report.get("pip_version"),
            "install": [dict({k: item.get(k) for k in keep},
                             metadata={"name": item["metadata"]["name"], "version": item["metadata"]["version"]})
                        for item in report.get("install", [])]}


def compile_installed(names):
    """unchecked-hash .pyc for the files of the distributions just installed (and only those: a
    base image's own .pyc are not rewritten into the layer)."""
    try:
        import compileall
        import importlib.metadata as metadata
        import py_compile
    except ImportError:  # Python < 3.8: no file listing; Python compiles on first import instead
        return
    for name in names:
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        for entry in dist.files or []:
            if str(entry).endswith(".py"):
                compileall.compile_file(str(dist.locate_file(entry)), quiet=2,
                                        invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)


def clamp(since, epoch):
    """Every path on the root file system changed after ``since`` gets mtime ``epoch``: the
    files this step wrote are already in the layer, so this adds nothing but fixed times."""
    root_dev = os.lstat("/").st_dev
    for top, dirs, files in os.walk("/"):
        dirs[:] = [d for d in dirs if os.path.join(top, d) not in SKIP
                   and os.lstat(os.path.join(top, d)).st_dev == root_dev]
        for path in [top] + [os.path.join(top, name) for name in files + dirs]:
            try:
                if path not in SKIP and os.lstat(path).st_mtime > since:
                    os.utime(path, (epoch, epoch), follow_symlinks=False)
            except OSError:
                pass


def main(helper, mode, epoch, interpreter):
    work = tempfile.mkdtemp(prefix="envcache-pip-")
    env = dict(os.environ, PIP_BREAK_SYSTEM_PACKAGES="1", PIP_NO_CACHE_DIR="1", PIP_DISABLE_PIP_VERSION_CHECK="1",
               PIP_ROOT_USER_ACTION="ignore", PIP_NO_INPUT="1", PIP_PROGRESS_BAR="off",
               SOURCE_DATE_EPOCH=str(epoch), PYTHONDONTWRITEBYTECODE="1")
    started = os.lstat(work).st_mtime
    try:
        version = subprocess.run([sys.executable, "-m", "pip", "--version"], stdout=subprocess.PIPE,
                                 universal_newlines=True, env=env)
        numbers = version.stdout.split()[1].split(".") if version.returncode == 0 else []
        if not numbers or tuple(int(n) for n in numbers[:2] if n.isdigit()) < (22, 2):
            sys.exit("envcache: the image's pip (%s) cannot write an installation report; the lock "
                     "needs pip >= 22.2 (install a newer pip in the base image)" % (version.stdout.strip() or "none"))
        ca = fetch(helper + "/ca.pem")
        if ca:
            with open(os.path.join(work, "ca.pem"), "wb") as out:
                out.write(ca)
            env["PIP_CERT"] = os.path.join(work, "ca.pem")
        requirements = os.path.join(work, "requirements.txt")
        with open(requirements, "wb") as out:
            out.write(fetch(helper + "/requirements.txt"))
        report = os.path.join(work, "report.json")
        command = [sys.executable, "-m", "pip", "install", "--report", report, "-r", requirements]
        command += ["--dry-run", "--quiet"] if mode == "resolve" else ["--no-deps", "--no-compile"]
        status = subprocess.run(command, env=env).returncode
        if status != 0:
            sys.exit(status)   # pip's own error lines, just printed, are the step's last words
        with open(report) as handle:
            result = reduced(json.load(handle))
        result["interpreter"] = interpreter
        if mode == "install":
            compile_installed(item["metadata"]["name"] for item in result["install"])
            os.makedirs(LOCK_DIR, exist_ok=True)
            with open(os.path.join(LOCK_DIR, "pip.json"), "wb") as out:
                out.write(fetch(helper + "/pip-lock.json"))
        send(helper + "/report", result)
    finally:
        for name in os.listdir(work):
            os.unlink(os.path.join(work, name))
        os.rmdir(work)
        shutil.rmtree(WHEELS, ignore_errors=True)   # before the clamp: /tmp's mtime is the last change
    if mode == "install":
        clamp(started - 1, epoch)


main(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4])
