"""Keys: not one byte of a secret in any message, rendered line, JSON diagnostic or repr; includes
stay inside the top file's directory; a declared provider never inherits a built-in's key."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

import moa_dsl
from moa_dsl import MoaError
from moa_dsl.config import EnvRef, ProviderConfig

OK = 'node a = propose openai:"x"\n'


def _error(text: str, filename: str = "<string>") -> MoaError:
    with pytest.raises(MoaError) as info:
        moa_dsl.loads(text, filename)
    return info.value


def _everything_shown(err: MoaError) -> str:
    """str(err), err.render() (plain and coloured), and what `moa check --format json` prints."""
    as_json = json.dumps([d.to_json() for d in err.diagnostics], ensure_ascii=False)
    return "\n".join([str(err), err.render(), err.render(color=True), as_json, repr(err.diagnostics)])


def _codes(err: MoaError) -> list[str]:
    return [d.code for d in err.diagnostics]


# ---- env("...") holding a key instead of a variable's name (E206) -------------------------------

KEY = "sk-proj-Zq8xR2mN4vB7tY1uK9pL3wE6"


def test_a_key_pasted_into_env_is_e206_and_masked() -> None:
    err = _error(f'provider p = openai {{ base_url = "http://h/v1", api_key = env("{KEY}") }}\n'
                 'node a = propose p:"x"\n')
    [d] = err.diagnostics
    assert d.code == "E206" and "sk-…" in d.message
    assert d.hint == 'env() takes the variable\'s name, e.g. env("OPENAI_API_KEY")'
    shown = _everything_shown(err)
    assert KEY[3:] not in shown and KEY[6:12] not in shown
    assert "env(\"" + "*" * len(KEY) + "\")" in err.render()  # starred in the source line


@pytest.mark.parametrize("value, why", [
    ("", "empty"),
    ("MY VAR", "not a valid"),
    ("gsk_Aa1Bb2Cc3Dd4Ee5Ff6Gg7Hh8", "looks like a key"),
    ("aZ3kQ9mX2pL7vB4nR8tY6wE1uI5oP0", "looks like a key"),  # long, mixed case and digits
])
def test_env_values_that_cannot_be_a_variable_name(value: str, why: str) -> None:
    err = _error(f'provider p = openai {{ base_url = "http://h/v1", api_key = env("{value}") }}\n'
                 'node a = propose p:"x"\n')
    assert _codes(err) == ["E206"] and why in err.diagnostics[0].message
    if len(value) > 6:
        assert value[3:] not in _everything_shown(err)


def test_a_header_from_env_with_a_key_in_it_is_e206() -> None:
    err = _error('provider p = openai { base_url = "http://h/v1", headers = { "X-Team" = env("sk-ant-api03-Qw9Er8Ty7") } }\n'
                 'node a = propose p:"x"\n')
    assert _codes(err) == ["E206"] and "api03-Qw9Er8Ty7" not in _everything_shown(err)


@pytest.mark.parametrize("name", ["OPENAI_API_KEY", "my_key", "_X1", "VLLM_KEY"])
def test_real_variable_names_are_fine(name: str) -> None:
    pipe = moa_dsl.loads(f'provider p = openai {{ base_url = "http://h/v1", api_key = env("{name}") }}\n'
                         'node a = propose p:"x"\n')
    assert pipe.graph.graph["providers"]["p"].api_key == EnvRef(name)


# ---- a literal key on a line with another mistake ---------------------------------------------

@pytest.mark.parametrize("line, secret, code", [
    ("provider p = openai { api_key = 'sk-SINGLEquoted12345' }", "SINGLEquoted12345", "E101"),
    ('provider p = openai { api_key: "sk-COLONsep123456" }', "COLONsep123456", "E101"),
    ('provider p = openai { apikey = "sk-APIKEYtypo1234" }', "APIKEYtypo1234", "E205"),
    ('provider p = openai { api_key = ["sk-INlist1234567"] }', "INlist1234567", "E206"),
    ("provider p = openai { api_key = hunter2BareName99 }", "hunter2BareName99", "E206"),
    ('provider p = openai { headers = { Authorization: "Bearer QWERTYuiop12345" } }', "QWERTYuiop12345", "E101"),
    ('provider p = openai { headers = { "X-Api-Key" = ["k3yINaLIST123"] } }', "k3yINaLIST123", "E206"),
    ('provider p = openai { token = "plainTOKENvalue1" }', "plainTOKENvalue1", "E205"),
    ('provider p = openai { password = "Hunter2Hunter2" }', "Hunter2Hunter2", "E205"),
    ('node a = propose openai:"x" { system = "use gsk_GROQkey1234567890" ]', "GROQkey1234567890", "E101"),
    ('provider p = openai { api_key = env(\'sk-ENVsingle1234567\') }', "ENVsingle1234567", "E101"),
    ('provider p = openai { api_key = "sk-UNTERMINATED123', "UNTERMINATED123", "E101"),
    ('provider p = openai { "Authorization" = "Bearer abcDEF123456789" }', "abcDEF123456789", "E205"),
])
def test_a_secret_is_masked_whatever_the_error(line: str, secret: str, code: str) -> None:
    err = _error(line + "\n" + OK)
    assert code in _codes(err)
    assert secret not in _everything_shown(err)
    assert secret not in "".join(err.sources.values())


def test_a_secret_in_an_included_file_with_a_syntax_error_is_masked(tmp_path: Path) -> None:
    (tmp_path / "keys.moa").write_text("provider p = openai { apikey: 'sk-INCLUDEDfile123' }\n")
    (tmp_path / "main.moa").write_text('include "keys.moa"\n' + OK)
    with pytest.raises(MoaError) as info:
        moa_dsl.load(tmp_path / "main.moa")
    assert "INCLUDEDfile123" not in _everything_shown(info.value)


def test_moa_check_json_never_carries_a_secret(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from moa_dsl.cli import main
    path = tmp_path / "bad.moa"
    path.write_text(f"provider p = openai {{ apikey = \"sk-CLIjson123456\", api_key = env(\"{KEY}\") }}\n"
                    "provider q = openai { api_key = 'sk-CLItext123456' }\n" + OK)
    for fmt in ("json", "text"):
        main(["check", "--format", fmt, str(path)])
        out, err = capsys.readouterr()
        for secret in ("CLIjson123456", KEY[3:], "CLItext123456"):
            assert secret not in out + err


# ---- repr ---------------------------------------------------------------------------------------

def test_provider_config_repr_masks_the_key_and_header_values() -> None:
    pipe = moa_dsl.loads('provider p = openai { base_url = "http://h/v1", api_key = "sk-REPRliteral123",\n'
                         '  headers = { "X-Team" = "teamSECRETvalue", "X-Env" = env("TEAM") } }\n'
                         'node a = propose p:"x"\n')
    shown = repr(pipe.graph.graph["providers"]) + str(pipe.graph.graph["providers"])
    assert "REPRliteral123" not in shown and "teamSECRETvalue" not in shown
    assert "'p'" in shown and "http://h/v1" in shown and "TEAM" in shown
    cfg = pipe.graph.graph["providers"]["p"]
    assert cfg.api_key == "sk-REPRliteral123"  # only the repr hides it
    assert "OPENAI_API_KEY" in repr(ProviderConfig("o", "openai", None, EnvRef("OPENAI_API_KEY")))


# ---- include stays inside the top file's directory (E208) --------------------------------------

@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / ".env").write_text("OPENAI_API_KEY=sk-DOTENVsecret12345\n")
    root = tmp_path / "project"
    (root / "lib").mkdir(parents=True)
    (root / "lib" / "models.moa").write_text('model m = openai:"x"\n')
    return root


@pytest.mark.parametrize("target", ["../.env", "../nothing-here.moa", "lib/../../.env", "{abs_env}",
                                    "{abs_missing}", "/etc/passwd"])
def test_an_include_outside_the_top_directory_is_e208_and_reads_nothing(project: Path, target: str) -> None:
    target = target.format(abs_env=project.parent / ".env", abs_missing=project.parent / "gone.moa")
    main = project / "main.moa"
    main.write_text(f'include "{target}"\n' + OK)
    with pytest.raises(MoaError) as info:
        moa_dsl.load(main)
    [d] = info.value.diagnostics
    assert d.code == "E208"
    shown = _everything_shown(info.value)
    assert "DOTENVsecret" not in shown and "OPENAI_API_KEY=" not in shown
    assert "no such file" not in shown and "exist" not in shown  # not even whether it is there


def test_the_same_message_whether_or_not_the_outside_file_exists(project: Path) -> None:
    messages = []
    for target in ("../.env", "../.envx"):
        (project / "main.moa").write_text(f'include "{target}"\n' + OK)
        with pytest.raises(MoaError) as info:
            moa_dsl.load(project / "main.moa")
        messages.append(info.value.diagnostics[0].message.replace(target, "T"))
    assert messages[0] == messages[1]


def test_a_symlink_leading_outside_counts_as_outside(project: Path) -> None:
    try:
        os.symlink(project.parent / ".env", project / "lib" / "innocent.moa")
    except OSError:
        pytest.skip("no symlinks here")
    (project / "main.moa").write_text('include "lib/innocent.moa"\n' + OK)
    with pytest.raises(MoaError) as info:
        moa_dsl.load(project / "main.moa")
    assert _codes(info.value) == ["E208"] and "DOTENVsecret" not in _everything_shown(info.value)


def test_a_symlink_inside_and_dot_dot_inside_are_fine(project: Path) -> None:
    os.symlink(project / "lib" / "models.moa", project / "alias.moa")
    (project / "lib" / "more.moa").write_text('include "../alias.moa"\n')   # up, but still inside
    (project / "main.moa").write_text('include "lib/more.moa"\nnode a = propose m\n')
    assert moa_dsl.load(project / "main.moa").graph.nodes["a"]["model"] == "x"


def test_an_included_file_cannot_climb_out_either(project: Path) -> None:
    (project / "lib" / "sneaky.moa").write_text('include "../../.env"\n')
    (project / "main.moa").write_text('include "lib/sneaky.moa"\n' + OK)
    with pytest.raises(MoaError) as info:
        moa_dsl.load(project / "main.moa")
    assert _codes(info.value) == ["E208"] and "DOTENVsecret" not in _everything_shown(info.value)


def test_loads_includes_stay_under_the_filename_directory_or_the_cwd(project: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    err = _error('include "../.env"\n' + OK, filename=str(project / "virtual.moa"))
    assert _codes(err) == ["E208"] and "DOTENVsecret" not in _everything_shown(err)
    monkeypatch.chdir(project)
    assert _codes(_error('include "../.env"\n' + OK)) == ["E208"]
    assert moa_dsl.loads('include "lib/models.moa"\nnode a = propose m\n').output == "a"


# ---- a declared provider's key is only what it says ----------------------------------------------

def test_a_declared_provider_without_api_key_gets_no_key(monkeypatch: pytest.MonkeyPatch) -> None:
    from moa_dsl.providers import openai as openai_provider
    from moa_dsl.providers.pool import ProviderPool

    pipe = moa_dsl.loads('provider mine = openai { base_url = "http://10.0.0.5:8000/v1" }\n'
                         'node a = propose mine:"x"\n')
    cfg = pipe.graph.graph["providers"]["mine"]
    assert cfg.api_key is None and cfg.base_url == "http://10.0.0.5:8000/v1"
    seen: list[dict[str, str]] = []
    real = openai_provider.OpenAIProvider.auth_headers
    monkeypatch.setattr(openai_provider.OpenAIProvider, "auth_headers",
                        lambda self, key: seen.append(real(self, key)) or seen[-1])
    pool = ProviderPool(pipe.graph.graph["providers"], environ={"OPENAI_API_KEY": "sk-USERSopenaiKEY1"})
    pool.check_keys(["mine"])  # needs nothing from the environment
    pool.get("mine")
    assert seen == [{}]


def test_a_redeclared_builtin_keeps_nothing_it_does_not_say() -> None:
    providers = moa_dsl.loads('provider together = openai { timeout = 60 }\n'
                              'provider k = openai { base_url = "http://h/v1", api_key = env("K") }\n'
                              'node a = propose together:"x"\nnode b = aggregate k:"y" <- a\n').graph.graph["providers"]
    assert providers["together"].api_key is None and providers["together"].base_url == "https://api.together.xyz/v1"
    assert providers["k"].api_key == EnvRef("K")


def test_builtin_providers_keep_their_environment_keys() -> None:
    providers = moa_dsl.loads('node a = propose together:"x"\nnode b = aggregate openai:"y" <- a\n').graph.graph["providers"]
    assert providers["together"].api_key == EnvRef("TOGETHER_API_KEY")
    assert providers["openai"].api_key == EnvRef("OPENAI_API_KEY")
