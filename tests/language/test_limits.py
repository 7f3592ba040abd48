"""Whatever is read, memory and time stay bounded: size limit, non-regular files, BOM, deep
include chains, wrong argument types. Memory is asserted with tracemalloc peaks, generously."""
from __future__ import annotations

import os
import tracemalloc
from pathlib import Path

import pytest

import moa_dsl
from moa_dsl import ConfigError, MoaError
from moa_dsl.language import loader


LIMIT = 8 * 1024 * 1024
OK = 'node a = propose openai:"x"\n'


def _peak(fn) -> int:
    tracemalloc.start()
    try:
        fn()
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    return peak


def _raises(exc_type, fn):
    with pytest.raises(exc_type) as info:
        fn()
    return info.value


def test_the_limit_is_8_mib() -> None:
    assert loader.MAX_SOURCE_BYTES == LIMIT


def test_dev_zero_is_refused_without_reading_it() -> None:
    if not os.path.exists("/dev/zero"):
        pytest.skip("no /dev/zero")
    holder = []
    peak = _peak(lambda: holder.append(_raises(MoaError, lambda: moa_dsl.load("/dev/zero"))))
    assert "/dev/zero" in str(holder[0]) and "not a regular file" in str(holder[0])
    assert peak < 4 * 1024 * 1024


def test_a_directory_is_a_directory_not_a_missing_file(tmp_path: Path) -> None:
    err = _raises(ConfigError, lambda: moa_dsl.load(tmp_path))
    assert "is a directory" in str(err) and "no such file" not in str(err).lower()


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_a_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.moa"
    os.mkfifo(fifo)
    err = _raises(ConfigError, lambda: moa_dsl.load(fifo))
    assert "not a regular file" in str(err)


def test_a_file_over_the_limit_is_e101_and_is_not_loaded(tmp_path: Path) -> None:
    big = tmp_path / "big.moa"
    with open(big, "wb") as fh:          # sparse: 64 MiB on paper, nothing on disk
        fh.truncate(8 * LIMIT)
    holder = []
    peak = _peak(lambda: holder.append(_raises(MoaError, lambda: moa_dsl.load(big))))
    err = holder[0]
    assert [d.code for d in err.diagnostics] == ["E101"]
    assert str(big) in str(err) and "8 MiB" in str(err)
    assert peak < 3 * LIMIT  # limit+1 bytes read, never the 64 MiB


def test_a_file_just_at_the_limit_is_read(tmp_path: Path) -> None:
    path = tmp_path / "full.moa"
    path.write_bytes(OK.encode() + b"#" * (LIMIT - len(OK) - 1) + b"\n")
    assert os.path.getsize(path) == LIMIT
    assert moa_dsl.load(path).output == "a"


def test_an_include_over_the_limit_is_e101_naming_it(tmp_path: Path) -> None:
    with open(tmp_path / "huge.moa", "wb") as fh:
        fh.truncate(LIMIT + 1)
    main = tmp_path / "main.moa"
    main.write_text('include "huge.moa"\n' + OK)
    err = _raises(MoaError, lambda: moa_dsl.load(main))
    [d] = err.diagnostics
    assert d.code == "E101" and "huge.moa" in d.message and "8 MiB" in d.message
    assert (d.span.file, d.span.line) == (str(main), 1)


def test_an_include_of_a_directory_or_a_device_is_e208(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    main = tmp_path / "main.moa"
    main.write_text('include "sub"\n' + OK)
    [d] = _raises(MoaError, lambda: moa_dsl.load(main)).diagnostics
    assert d.code == "E208" and "is a directory" in d.message


def test_loads_over_the_limit_is_e101() -> None:
    err = _raises(MoaError, lambda: moa_dsl.loads(OK + "#" * LIMIT))
    assert [d.code for d in err.diagnostics] == ["E101"] and "8 MiB" in str(err)
    wide = "#" + "é" * (LIMIT // 2)  # under the limit in characters, over it in UTF-8 bytes
    assert [d.code for d in _raises(MoaError, lambda: moa_dsl.loads(wide)).diagnostics] == ["E101"]


def test_a_long_string_literal_lexes_in_linear_memory() -> None:
    text = 'prompt p = "' + "a" * 1_000_000 + '"\n' + 'node a = propose openai:"x" { system = p }\n'
    holder = []
    peak = _peak(lambda: holder.append(moa_dsl.loads(text)))
    assert len(holder[0].graph.nodes["a"]["params"]["system"]) == 1_000_000
    assert peak < 60 * 1024 * 1024


def test_a_long_triple_quoted_literal_lexes_in_linear_memory() -> None:
    text = 'prompt p = """' + ("ab\"c\n" * 200_000) + '"""\n' + 'node a = propose openai:"x" { system = p }\n'
    holder = []
    peak = _peak(lambda: holder.append(moa_dsl.loads(text)))
    assert holder[0].graph.nodes["a"]["params"]["system"].count("\n") == 200_000
    assert peak < 60 * 1024 * 1024


def test_a_large_file_compiles_in_bounded_memory() -> None:
    # 2 MB of statements with secrets to mask: a few bytes per character at most.
    line = 'provider p{i} = openai {{ base_url = "http://h/v1", api_key = "sk-{i:020d}" }}\n'
    text = "".join(line.format(i=i) for i in range(25_000)) + OK
    assert len(text) < LIMIT
    holder = []
    peak = _peak(lambda: holder.append(loader._mask_all({"f": text})))
    assert "sk-0000" not in holder[0]["f"] and len(holder[0]["f"]) == len(text)
    assert peak < 8 * len(text)


def test_a_bom_is_ignored_and_columns_do_not_move(tmp_path: Path) -> None:
    path = tmp_path / "bom.moa"
    path.write_bytes(b"\xef\xbb\xbf" + b'node a = propose qwn\n')
    [d] = _raises(MoaError, lambda: moa_dsl.load(path)).diagnostics
    assert (d.code, d.span.line, d.span.column) == ("E201", 1, 18)
    assert " 1 | node a = propose qwn" in str(_raises(MoaError, lambda: moa_dsl.load(path)))
    path.write_bytes(b"\xef\xbb\xbf" + OK.encode())
    assert moa_dsl.load(path).output == "a"
    assert moa_dsl.loads("\ufeff" + OK).output == "a"


def test_an_included_file_may_start_with_a_bom(tmp_path: Path) -> None:
    (tmp_path / "lib.moa").write_bytes(b"\xef\xbb\xbf" + b'model m = openai:"x"\n')
    (tmp_path / "main.moa").write_text('include "lib.moa"\nnode a = propose m\n')
    assert moa_dsl.load(tmp_path / "main.moa").graph.nodes["a"]["model"] == "x"


def _chain(tmp_path: Path, depth: int) -> Path:
    for i in range(depth):
        (tmp_path / f"f{i}.moa").write_text(f'include "f{i + 1}.moa"\n')
    (tmp_path / f"f{depth}.moa").write_text(OK)
    return tmp_path / "f0.moa"


def test_a_500_deep_include_chain_is_e208_not_a_recursion_error(tmp_path: Path) -> None:
    err = _raises(MoaError, lambda: moa_dsl.load(_chain(tmp_path, 500)))
    assert [d.code for d in err.diagnostics] == ["E208"]
    assert "include chain deeper than" in err.diagnostics[0].message


def test_a_reasonable_include_chain_still_works(tmp_path: Path) -> None:
    assert moa_dsl.load(_chain(tmp_path, 30)).output == "a"


@pytest.mark.parametrize("loads", [moa_dsl.loads, loader.loads], ids=["pipeline", "language"])
def test_loads_wants_str(loads) -> None:
    err = _raises(TypeError, lambda: loads(b'node a = propose openai:"x"'))
    assert str(err) == "loads() takes the text of a .moa file as str, not bytes; decode it first"
    assert "not NoneType" in str(_raises(TypeError, lambda: loads(None)))
    assert "not int" in str(_raises(TypeError, lambda: loads(42)))
    assert "filename" in str(_raises(TypeError, lambda: loads(OK, filename=3)))
