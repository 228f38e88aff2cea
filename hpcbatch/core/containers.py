"""Container images and runtimes, decided on the controller: what an image is, who can run it.

A job's `image` is one of three kinds, told apart by its spelling alone (the
controller cannot look at the host's filesystem):

- `oci`: a registry or local image name (`alpine:3.20`, `localhost/tools:1`,
  `docker://ghcr.io/x/y:tag`), run by podman, docker, or apptainer/singularity
  (which convert it);
- `dir`: an absolute path to a directory holding a root filesystem (an unpacked
  image, `ch-image` output, a debootstrap tree), run by the unprivileged
  runtimes ch-run (Charliecloud) and bwrap (bubblewrap), or apptainer;
- `sif`: an absolute path ending in `.sif`, run by apptainer or singularity.

The runtime for a node is chosen from the host's facts (the runtimes its agent
found) in an order the operator sets per compute environment, defaulting to
`DEFAULT_ORDER`. A job whose image kind no host of its queue can run is
refused at submit (`unrunnable`), the same way as a job no host could fit.

The argv for each runtime is built on the host, where the attempt directory,
the devices and the limits are known: see `transport/agent/containers.py`.

Pure and stdlib only.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final, Literal

__all__ = [
    "DEFAULT_ORDER",
    "KINDS",
    "RUNTIMES",
    "ImageError",
    "ImageRef",
    "Mount",
    "choose_runtime",
    "parse_image",
    "parse_mount",
    "parse_mounts",
    "runtimes_for",
    "unrunnable",
]

ImageKind = Literal["oci", "dir", "sif"]

RUNTIMES: Final = ("podman", "docker", "apptainer", "singularity", "ch-run", "bwrap")
"""Every runtime hpcbatch knows how to drive (the names the agent looks for on PATH)."""

DEFAULT_ORDER: Final = RUNTIMES
"""The preference when a compute environment sets none: full OCI engines first."""

KINDS: Final[Mapping[ImageKind, frozenset[str]]] = {
    "oci": frozenset({"podman", "docker", "apptainer", "singularity"}),
    "dir": frozenset({"ch-run", "bwrap", "apptainer", "singularity"}),
    "sif": frozenset({"apptainer", "singularity"}),
}
"""Which runtimes can run each kind of image."""

KIND_WORDS: Final[Mapping[ImageKind, str]] = {
    "oci": "an OCI image name",
    "dir": "a directory image",
    "sif": "a SIF file",
}

# Docker's reference grammar, loosely: [registry[:port]/]path[:tag][@digest], lower-case
# path; a first component is a registry when it has a dot or a port, or is localhost.
_OCI_RE = re.compile(
    r"^(?:(?:localhost|[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+)(?::[0-9]+)?/|[A-Za-z0-9-]+:[0-9]+/)?"
    r"[a-z0-9]+(?:[._-]+[a-z0-9]+)*"
    r"(?:/[a-z0-9]+(?:[._-]+[a-z0-9]+)*)*(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?"
    r"(?:@[a-z0-9]+:[a-f0-9]{32,128})?$"
)
_SCHEMES: Final = ("docker://", "oci:", "dir:", "sif:")


class ImageError(ValueError):
    """An image reference or mount that cannot be used; the message says why."""


@dataclass(frozen=True)
class ImageRef:
    """A parsed image: `ref` is what the runtime is given (no scheme for OCI names)."""

    kind: ImageKind
    ref: str


@dataclass(frozen=True)
class Mount:
    """A bind mount: `source` on the host at `target` in the container."""

    source: str
    target: str
    read_only: bool = False

    def spec(self) -> str:
        return f"{self.source}:{self.target}" + (":ro" if self.read_only else "")


def parse_image(text: str) -> ImageRef:
    """Classify an image reference by its spelling.

    `/path/x.sif` (or `sif:/path`) is a SIF file, another absolute path (or
    `dir:/path`) a directory image, anything else an OCI name (`docker://` and
    `oci:` prefixes are accepted and dropped). A relative path is refused: the
    job's working directory differs per host.
    """
    text = text.strip()
    if not text:
        raise ImageError("image: empty reference")
    if any(c.isspace() or c in "\0" for c in text):
        raise ImageError(f"image {text!r}: contains white space")
    scheme = next((s for s in _SCHEMES if text.startswith(s)), "")
    body = text[len(scheme) :]
    if scheme in ("dir:", "sif:") or (not scheme and body.startswith(("/", "./", "../", "~"))):
        if not body.startswith("/"):
            raise ImageError(
                f"image {text!r}: a directory or SIF image must be an absolute path "
                "(the working directory differs per host)"
            )
        if scheme == "sif:" or (not scheme and body.endswith(".sif")):
            return ImageRef("sif", body)
        return ImageRef("dir", body.rstrip("/") or "/")
    if not _OCI_RE.match(body) or len(body) > 512:
        raise ImageError(
            f"image {text!r}: not an image name like 'alpine:3.20' or "
            "'registry.example.com/team/tool:1.2', nor an absolute path"
        )
    return ImageRef("oci", body)


def parse_mount(text: str) -> Mount:
    """`SRC[:DST][:ro|rw]`, both absolute paths; DST defaults to SRC."""
    parts = text.split(":")
    read_only = False
    if len(parts) > 1 and parts[-1] in ("ro", "rw"):
        read_only = parts.pop() == "ro"
    if len(parts) > 2 or not parts[0]:
        raise ImageError(f"mount {text!r}: expected SRC[:DST][:ro]")
    source, target = parts[0], parts[-1]
    for what, path in (("source", source), ("destination", target)):
        if not path.startswith("/"):
            raise ImageError(f"mount {text!r}: the {what} must be an absolute path")
        if "\0" in path or "," in path or any(c in path for c in "\n\r"):
            raise ImageError(f"mount {text!r}: the {what} has a character hpcbatch cannot pass")
        if any(p == ".." for p in path.split("/")):
            raise ImageError(f"mount {text!r}: the {what} must not contain '..'")
    return Mount(_norm(source), _norm(target), read_only)


def parse_mounts(items: Iterable[str]) -> tuple[Mount, ...]:
    """Mounts from a list whose items may each hold several, comma-separated (pyxis style)."""
    out: list[Mount] = []
    for item in items:
        out.extend(parse_mount(p.strip()) for p in item.split(",") if p.strip())
    targets = [m.target for m in out]
    dup = next((t for t in targets if targets.count(t) > 1), None)
    if dup is not None:
        raise ImageError(f"mounts: {dup} is the destination of two mounts")
    return tuple(out)


def _norm(path: str) -> str:
    parts = [p for p in path.split("/") if p and p != "."]
    return "/" + "/".join(parts)


def runtimes_for(kind: ImageKind, order: Sequence[str] | None = None) -> tuple[str, ...]:
    """The runtimes that can run `kind`, in preference order."""
    return tuple(r for r in (order or DEFAULT_ORDER) if r in KINDS[kind])


def choose_runtime(
    image: ImageRef, available: Mapping[str, str], order: Sequence[str] | None = None
) -> tuple[str, str] | None:
    """(runtime, executable path) for `image` on a host with `available` runtimes.

    `available` maps runtime names to paths, as the host's facts report them.
    """
    for name in runtimes_for(image.kind, order):
        path = available.get(name)
        if path:
            return name, path
    return None


def unrunnable(
    image: ImageRef, hosts: Iterable[tuple[str, Mapping[str, str], Sequence[str] | None]]
) -> str | None:
    """Why no host can run `image`, or None if one can.

    `hosts` are (name, runtimes found, the compute environment's order or None).
    """
    seen: list[str] = []
    for name, available, order in hosts:
        if choose_runtime(image, available, order) is not None:
            return None
        found = ", ".join(sorted(available)) or "none"
        allowed = f"; its compute environment allows {', '.join(order)}" if order else ""
        seen.append(f"{name} (has {found}{allowed})")
    if not seen:
        return None
    wanted = ", ".join(runtimes_for(image.kind))
    return (
        f"no host of this queue can run {KIND_WORDS[image.kind]} ({image.ref}): "
        f"it needs one of {wanted}; {'; '.join(seen)}"
    )
