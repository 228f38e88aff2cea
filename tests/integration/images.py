"""Container images for tests, built here: no machine running the tests reaches a registry.

`busybox_rootfs()` is a root filesystem made of Debian's static busybox and its
applet links (a directory image for ch-run and bwrap); `busybox_tar()` the same
as a tar for `podman import`. Both are cached under /var/tmp, keyed by the
busybox binary's hash, world-readable, so that the sandbox's login user (not
root) can use them and later runs do not build them again. `podman_image()`
imports the tar into the login user's own (rootless) podman store, once.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

from hpcbatch.sandbox import Sandbox

BUSYBOX = Path("/bin/busybox")
CACHE = Path(f"/var/tmp/hpcbatch-test-images-{os.getuid()}")
MOUNT_POINTS = ("proc", "sys", "dev", "tmp", "home", "root", "etc", "var/tmp", "usr/bin", "work")


def _key() -> str:
    if not BUSYBOX.is_file():
        raise RuntimeError(
            f"{BUSYBOX} is missing: apt-get install busybox-static (scripts/install-prereqs.sh)"
        )
    return hashlib.sha256(BUSYBOX.read_bytes()).hexdigest()[:12]


def busybox_rootfs() -> Path:
    """A busybox root filesystem directory (built once per busybox binary)."""
    key = _key()
    target = CACHE / f"busybox-{key}-v2" / "rootfs"
    if target.is_dir():
        return target
    CACHE.mkdir(mode=0o755, exist_ok=True)
    target.parent.mkdir(mode=0o755, exist_ok=True)
    build = Path(tempfile.mkdtemp(prefix="rootfs-", dir=target.parent))
    for d in MOUNT_POINTS:
        (build / d).mkdir(parents=True, exist_ok=True)
    (build / "tmp").chmod(0o1777)
    (build / "bin").mkdir(exist_ok=True)
    shutil.copy2(BUSYBOX, build / "bin" / "busybox")
    applets = subprocess.run(
        [str(BUSYBOX), "--list"], capture_output=True, text=True, check=True
    ).stdout.split()
    for applet in applets:
        if applet != "busybox":
            (build / "bin" / applet).symlink_to("busybox")
    (build / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (build / "etc" / "group").write_text("root:x:0:\n")
    (build / "etc" / "hpcbatch-test-image").write_text("busybox\n")  # "am I inside?"
    for path in [build, *build.rglob("*")]:
        if not path.is_symlink():
            path.chmod(0o1777 if path.name == "tmp" else 0o755)
    try:
        build.rename(target)
    except OSError:  # built by a concurrent run meanwhile
        shutil.rmtree(build, ignore_errors=True)
    return target


def busybox_tar() -> Path:
    rootfs = busybox_rootfs()
    tar = rootfs.parent / "rootfs.tar"
    if not tar.is_file():
        tmp = tar.with_suffix(f".tmp{os.getpid()}")
        with tarfile.open(tmp, "w") as t:
            t.add(rootfs, arcname=".")
        tmp.chmod(0o644)
        tmp.rename(tar)
    return tar


def podman_image(sandbox: Sandbox) -> str:
    """`localhost/hpcbatch-busybox:<key>` in the sandbox login user's podman store."""
    if shutil.which("podman") is None:
        raise RuntimeError("podman is missing: apt-get install podman runc (install-prereqs.sh)")
    name = f"localhost/hpcbatch-busybox:{_key()}-v2"
    tar = busybox_tar()
    script = f"podman image exists {name} || podman import --quiet {tar} {name}"
    proc = subprocess.run(
        sandbox.ssh_argv("node1", script), capture_output=True, text=True, timeout=300
    )
    if proc.returncode != 0:
        raise RuntimeError(f"cannot import the test image into podman: {proc.stderr.strip()}")
    return name
