"""`%%moa` in a real JupyterLab, in headless Chromium, as a user would use it.

JupyterLab runs as a subprocess on 127.0.0.1 (a free port, token auth, its own root, settings,
workspace, config and data directories); its kernels are this interpreter with this checkout on
PYTHONPATH. The notebook calls a loopback FakeLLMServer: three proposers (0.3 / 0.8 / 1.5 s, one
with a long model id) and an aggregator that streams Markdown. The test presses Run All, then
checks what the page shows: the graph, one panel row per node reaching done, the streamed answer,
a typo's diagnostic without a traceback, the cached rerun, failed / skipped / interrupted rows, the
panel fitting at 1024x768 with the file browser open, and, after save + kernel shutdown + reload,
the static record in the panel's place.

Screenshots go to $MOA_ARTIFACTS/browser (or a temporary folder); the path is printed, and every
failure names the step and the screenshot taken at that moment.

Needs Chromium at /usr/bin/chromium (Debian's `chromium`; .ci/run installs it) and the `playwright`
and `jupyterlab` packages (the `[lab]` extra, part of `[dev]`). Outside CI the test is skipped when
they are missing; in CI (CI=true) a missing piece fails it.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import nbformat
import pytest

from conftest import ROOT
from moa_dsl.testing import FakeLLMServer

pytestmark = pytest.mark.slow

CHROMIUM = os.environ.get("MOA_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
KEY_VAR = "MOA_BROWSER_TEST_KEY"
WAIT_MS = 120_000
LONG_ID = "meta-llama/Llama-3.3-70B-Instruct-Turbo"
ANSWER_MD = ("## Why the sky is blue\n\n"
             "Sunlight is **scattered** by the molecules of the air, and blue light (short "
             "wavelengths) is scattered much more than red:\n\n"
             "- Rayleigh scattering goes as *1 / wavelength^4*;\n"
             "- so the whole sky glows blue;\n"
             "- and sunsets are red, the blue having been scattered away.\n\n"
             "That is the answer the aggregator streamed.")


def _missing() -> str | None:
    try:
        import jupyterlab  # noqa: F401
        import playwright  # noqa: F401
    except ImportError as exc:
        return f"{exc.name} is not installed (pip install -e '.[dev]')"
    if not Path(CHROMIUM).exists():
        return f"no Chromium at {CHROMIUM} (apt-get install -y chromium)"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _artifacts() -> Path:
    base = os.environ.get("MOA_ARTIFACTS")
    path = Path(base) / "browser" if base else Path(tempfile.mkdtemp(prefix="moa-browser-"))
    path.mkdir(parents=True, exist_ok=True)
    print(f"\nbrowser test screenshots: {path}", file=sys.stderr)
    return path


# -- the notebook the user writes -------------------------------------------------------------------

def _topology(url: str) -> str:
    return f"""%%moa -q {{question}}
provider fake = openai {{ base_url = "{url}", api_key = env("{KEY_VAR}"), retries = 0 }}
node quick  = propose fake:"fast-0.3"
node middle = propose fake:"mid-0.8"
node slow   = propose fake:"{LONG_ID}"
node final  = aggregate fake:"writer" <- quick, middle, slow
output final"""


def _failing(url: str) -> str:
    return f"""%%moa --as partial -q 'a run with a failure' --no-cache
provider fake = openai {{ base_url = "{url}", api_key = env("{KEY_VAR}"), retries = 0 }}
node ok    = propose fake:"fast-0.3"
node bad   = propose fake:"boom"
node both  = aggregate fake:"writer" <- ok, bad {{ min_inputs = 2 }}
node final = aggregate fake:"writer" <- ok, both
output final"""


PREVIEW = '''# The states of the operators being added (quorum cancels stragglers, agree skips a call), drawn
# from a hand-made state: how their rows read next to the others.
from IPython.display import HTML, display
from moa_dsl.jupyter.panel import NodeRow, PanelState, panel_html
rows = [NodeRow("p1", "fast-0.3", "fake", "done", 0.0, 0.31, 20, 40),
        NodeRow("p2", "mid-0.8", "fake", "done", 0.0, 0.82, 20, 38),
        NodeRow("p3", "meta-llama/Llama-3.3-70B-Instruct-Turbo", "fake", "cancelled", 0.0, 0.82,
                detail="quorum reached: 2 of 3 answered"),
        NodeRow("judge", "writer", "fake", "agreed", 0.82, 0.82, detail="the proposers agreed: no call"),
        NodeRow("final", "writer", "fake", "done", 0.82, 1.4, 80, 60)]
state = PanelState(rows={r.name: r for r in rows}, output="final", status="ok", elapsed_s=1.4,
                   usage={"calls": 3, "cache_hits": 0, "prompt_tokens": 120, "completion_tokens": 138})
display(HTML(panel_html(state)))'''


def _notebook(url: str) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    cells = [
        ("code", "%load_ext moa_dsl\nquestion = 'Why is the sky blue?'", {}),
        ("code", _topology(url), {}),
        ("code", "%%moa --as typo\nnode a = propose fake:\"x\"\nnode final = aggregate fake:\"y\" <- a "
                 "{ temprature = 0.2 }", {"tags": ["raises-exception"]}),
        ("code", "%moa run moa_pipeline -q {question} -o again", {}),
        ("code", _failing(url), {}),
        ("code", PREVIEW, {}),
        ("code", f"%%moa --as stuck -q 'never answers' --no-cache\nprovider fake = openai {{ base_url = \"{url}\", "
                 f"api_key = env(\"{KEY_VAR}\"), retries = 0, timeout = 600 }}\n"
                 "node fast = propose fake:\"fast-0.3\"\nnode hang = propose fake:\"hang\"\n"
                 "node final = aggregate fake:\"writer\" <- fast, hang", {"tags": ["raises-exception"]}),
    ]
    for kind, source, meta in cells:
        cell = nbformat.v4.new_code_cell(source) if kind == "code" else nbformat.v4.new_markdown_cell(source)
        cell.metadata.update(meta)
        nb.cells.append(cell)
    return nb


CELL_TOPOLOGY, CELL_TYPO, CELL_RERUN, CELL_FAILING, CELL_PREVIEW, CELL_STUCK = range(1, 7)


# -- the server and the browser ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def fake_llm():
    def writer(model, body):
        return ANSWER_MD

    with FakeLLMServer(latency={"fast-0.3": 0.3, "mid-0.8": 0.8, LONG_ID: 1.5, "writer": 0.2, "hang": 3600},
                       token_delay=0.03, responder={"writer": writer}) as server:
        server.inject("boom", "500", message="the upstream model is overloaded")
        yield server


@pytest.fixture(scope="module")
def lab(tmp_path_factory, fake_llm):
    why = _missing()
    if why:
        if os.environ.get("CI"):
            pytest.fail(f"the browser test cannot run in CI: {why}")
        pytest.skip(why)
    base = tmp_path_factory.mktemp("lab")
    root, home = base / "root", base / "home"
    for d in (root, home, base / "settings", base / "workspaces", base / "config", base / "data", base / "runtime"):
        d.mkdir(parents=True, exist_ok=True)
    # Settings: every cell in the DOM (no windowing: off-screen cells are measured too), no news popup.
    nb_settings = base / "settings" / "@jupyterlab" / "notebook-extension"
    nb_settings.mkdir(parents=True)
    (nb_settings / "tracker.jupyterlab-settings").write_text(json.dumps({"windowingMode": "none"}))
    ap = base / "settings" / "@jupyterlab" / "apputils-extension"
    ap.mkdir(parents=True)
    (ap / "notification.jupyterlab-settings").write_text(json.dumps({"fetchNews": "false",
                                                                      "checkForUpdates": False}))
    nbformat.write(_notebook(fake_llm.url), root / "panel.ipynb")
    port, token = _free_port(), "moa-browser-" + os.urandom(8).hex()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
           "JUPYTER_CONFIG_DIR": str(base / "config"), "JUPYTER_DATA_DIR": str(base / "data"),
           "JUPYTER_RUNTIME_DIR": str(base / "runtime"), "HOME": str(home), KEY_VAR: "sk-browser",
           "MOA_CACHE_DIR": str(base / "cache"), "JUPYTER_PLATFORM_DIRS": "1"}
    log = (base / "lab.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", f"--ServerApp.port={port}", "--ServerApp.ip=127.0.0.1",
         "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
         f"--LabApp.user_settings_dir={base / 'settings'}", f"--LabApp.workspaces_dir={base / 'workspaces'}",
         "--LabApp.expose_app_in_browser=True", "--LabApp.news_url=", "--LabApp.extension_manager=readonly", "--ServerApp.terminals_enabled=False",
         *(["--allow-root"] if os.geteuid() == 0 else [])],
        env=env, stdout=log, stderr=subprocess.STDOUT, cwd=root)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_for_server(url, token, proc, base / "lab.log")
        yield {"url": url, "token": token, "root": root, "log": base / "lab.log"}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def _wait_for_server(url: str, token: str, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"JupyterLab exited with {proc.returncode} before serving; its log:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2):
                return
        except OSError:
            time.sleep(0.25)   # polling a server that is starting, not timing the code under test
    pytest.fail(f"JupyterLab did not answer at {url} within 120 s; its log:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def browser(lab):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield b
        finally:
            b.close()


class Page:
    """The JupyterLab page, with waits that fail with a screenshot and the cell's text."""

    def __init__(self, page, shots: Path):
        self.page, self.shots = page, shots

    def shot(self, name: str, *, full: bool = False, element=None) -> Path:
        path = self.shots / f"{name}.png"
        (element or self.page).screenshot(path=str(path), **({"full_page": True} if full and not element else {}))
        return path

    def command(self, name: str, args: dict | None = None) -> None:
        self.page.evaluate("([c, a]) => window.jupyterapp.commands.execute(c, a)", [name, args or {}])

    def cell_text(self, i: int) -> str:
        return self.page.evaluate(
            "i => { const c = document.querySelectorAll('.jp-NotebookPanel .jp-Notebook .jp-Cell')[i];"
            " return c ? c.querySelector('.jp-Cell-outputWrapper').innerText : '<no such cell>'; }", i)

    def wait(self, js: str, arg, what: str, step: str, timeout: int = WAIT_MS) -> None:
        from playwright.sync_api import TimeoutError as PlaywrightTimeout

        try:
            self.page.wait_for_function(js, arg=arg, timeout=timeout)
        except PlaywrightTimeout:
            shot = self.shot(f"FAILED-{step}", full=True)
            cell = arg if isinstance(arg, int) else arg[0] if isinstance(arg, list) and isinstance(arg[0], int) else None
            text = self.cell_text(cell) if cell is not None else ""
            pytest.fail(f"[{step}] waited {timeout // 1000} s for {what}; it never happened.\n"
                        f"screenshot: {shot}\n" + (f"cell {cell} output was:\n{text[:2000]}" if cell is not None else ""))


# JS: the rows of the run panel in cell i, as {node: state}
ROWS = """i => {
  const c = document.querySelectorAll('.jp-NotebookPanel .jp-Notebook .jp-Cell')[i];
  if (!c) return null;
  const out = {};
  for (const tr of c.querySelectorAll('.moa-panel tr[data-moa-node]'))
    out[tr.dataset.moaNode] = tr.children[2].innerText.trim();
  return out;
}"""
ALL_IN = f"([i, states, n]) => {{ const r = ({ROWS})(i); return r && Object.keys(r).length === n && " \
         "Object.values(r).every(s => states.includes(s)); }"


KERNEL_IDLE = """() => { const w = window.jupyterapp && window.jupyterapp.shell.currentWidget;
  const k = w && w.sessionContext && w.sessionContext.session && w.sessionContext.session.kernel;
  return !!k && k.connectionStatus === 'connected' && k.status === 'idle'; }"""


def _open(page: Page, lab: dict) -> None:
    page.page.goto(f"{lab['url']}/lab/tree/panel.ipynb?token={lab['token']}")
    page.wait("() => window.jupyterapp && document.querySelectorAll('.jp-NotebookPanel .jp-Cell').length >= 7",
              None, "the notebook to open with its 7 cells", "open")
    page.wait(KERNEL_IDLE, None, "the notebook's kernel to start and be idle", "kernel")


def test_the_panel_in_jupyterlab(lab, browser, fake_llm):
    shots = _artifacts()
    ctx = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = Page(ctx.new_page(), shots)
    errors: list[str] = []
    page.page.on("pageerror", lambda e: errors.append(str(e)))
    _open(page, lab)
    page.shot("01-opened")

    # Every state a row shows, recorded as the DOM changes: proves the panel was live, with no race.
    page.page.evaluate("""() => { window.moaSeen = new Set(); new MutationObserver(() => {
        for (const tr of document.querySelectorAll('.moa-panel tr[data-moa-node]'))
          window.moaSeen.add(tr.dataset.moaNode + ':' + tr.children[2].innerText.trim());
      }).observe(document.body, {subtree: true, childList: true, characterData: true}); }""")
    page.command("notebook:run-all-cells")

    # the graph, then one row per node reaching done, while the answer streams under the panel
    page.wait("i => !!document.querySelectorAll('.jp-NotebookPanel .jp-Cell')[i].querySelector('.jp-OutputArea svg')",
              CELL_TOPOLOGY, "the topology's graph (an inline SVG)", "graph")
    page.wait("() => window.moaSeen.has('slow:running')", None, "the live panel to show the slow row running", "live")
    page.shot("02-running")
    page.wait(ALL_IN, [CELL_TOPOLOGY, ["done"], 4], "all 4 rows to reach 'done'", "done")
    seen = page.page.evaluate("() => [...window.moaSeen]")
    assert {"quick:running", "quick:done", "slow:running", "final:running"} <= set(seen), seen
    page.wait("i => document.querySelectorAll('.jp-NotebookPanel .jp-Cell')[i].innerText.includes("
              "'That is the answer the aggregator streamed.')", CELL_TOPOLOGY, "the end of the streamed answer",
              "answer")
    cell = page.page.locator(".jp-NotebookPanel .jp-Cell").nth(CELL_TOPOLOGY)
    answer = cell.locator(".jp-RenderedMarkdown").last
    assert answer.locator("h2").inner_text().strip() == "Why the sky is blue", "the answer is not rendered Markdown"
    assert answer.locator("li").count() == 3
    panel_box = cell.locator(".moa-panel").bounding_box()
    answer_box = answer.bounding_box()
    assert panel_box and answer_box and answer_box["y"] >= panel_box["y"] + panel_box["height"] - 1, \
        "the answer must sit under the panel, in one place"
    text = page.cell_text(CELL_TOPOLOGY)
    assert "ok: 4 calls, 0 cache hits" in text, f"no totals line in the panel:\n{text}"
    for head in ("node", "model", "status", "time", "tokens"):
        assert cell.locator(f".moa-panel th:text-is('{head}')").count() == 1, f"no column heading {head!r}"
    long_cell = cell.locator(f".moa-panel td[title='fake:{LONG_ID}']")
    assert long_cell.count() == 1, "the long model id has no tooltip with the full text"
    row_heights = [b["height"] for b in
                   (cell.locator(".moa-panel tr[data-moa-node]").nth(i).bounding_box() for i in range(4))]
    assert max(row_heights) < 1.5 * min(row_heights), f"a row wrapped into a double-height row: {row_heights}"
    page.shot("03-done", element=cell)

    # the typo: a diagnostic, no traceback
    page.wait("i => /E\\d{3}/.test(document.querySelectorAll('.jp-NotebookPanel .jp-Cell')[i].innerText)",
              CELL_TYPO, "the typo cell's diagnostic (an E-code)", "typo")
    typo = page.cell_text(CELL_TYPO)
    assert "Traceback" not in typo and "temprature" in typo, typo

    # the rerun: every row from the cache, nothing called
    page.wait(ALL_IN, [CELL_RERUN, ["cached"], 4], "all 4 rows of the rerun to be 'cached'", "rerun")
    page.wait("i => document.querySelectorAll('.jp-NotebookPanel .jp-Cell')[i].innerText.includes('4 cache hits')",
              CELL_RERUN, "the rerun's totals to say 4 cache hits", "rerun-totals")
    page.shot("04-rerun", element=page.page.locator(".jp-NotebookPanel .jp-Cell").nth(CELL_RERUN))

    # failed and skipped rows say why
    page.wait(ALL_IN, [CELL_FAILING, ["done", "failed", "skipped"], 4], "the failing run to end", "failing")
    failing = page.cell_text(CELL_FAILING)
    assert "overloaded" in failing and "min_inputs" in failing, failing
    page.shot("05-failed-skipped", element=page.page.locator(".jp-NotebookPanel .jp-Cell").nth(CELL_FAILING))
    page.shot("06-cancelled-agreed-preview", element=page.page.locator(".jp-NotebookPanel .jp-Cell").nth(CELL_PREVIEW))

    # an interrupted run: the kernel's interrupt while one call hangs
    page.wait(f"([i]) => {{ const r = ({ROWS})(i); return r && r.hang === 'running' && r.fast === 'done'; }}",
              [CELL_STUCK], "the hanging call to be running and the other done", "stuck")
    page.command("kernelmenu:interrupt")
    page.wait("i => document.querySelectorAll('.jp-NotebookPanel .jp-Cell')[i].innerText.includes('interrupted')",
              CELL_STUCK, "the interrupted run to say so", "interrupt")
    page.wait(KERNEL_IDLE, None, "the kernel to be idle after the interrupt", "idle")
    stuck = page.cell_text(CELL_STUCK)
    assert "Traceback" not in stuck, stuck
    page.shot("07-interrupted", element=page.page.locator(".jp-NotebookPanel .jp-Cell").nth(CELL_STUCK))

    # dark theme: the same panel
    page.command("apputils:change-theme", {"theme": "JupyterLab Dark"})
    page.wait("() => document.body.dataset.jpThemeLight === 'false'", None, "the dark theme", "dark")
    page.shot("08-dark", element=cell)
    page.command("apputils:change-theme", {"theme": "JupyterLab Light"})
    page.wait("() => document.body.dataset.jpThemeLight === 'true'", None, "the light theme", "light")

    _check_fits_narrow(page, ctx)

    # save, shut the kernel down, reload: the record is in the panel's place
    page.command("docmanager:save")
    saved = lab["root"] / "panel.ipynb"
    _wait_saved(saved)
    _shutdown_kernels(lab)
    page.page.reload()
    _open_reloaded(page)
    page.wait(ALL_IN, [CELL_TOPOLOGY, ["done"], 4], "the reopened notebook's panel to show all 4 rows done",
              "reopen")
    reopened = page.cell_text(CELL_TOPOLOGY)
    assert "model not found" not in reopened and "Error displaying widget" not in reopened, reopened
    assert "ok: 4 calls, 0 cache hits" in reopened and "That is the answer the aggregator streamed." in reopened
    page.shot("09-reopened", element=page.page.locator(".jp-NotebookPanel .jp-Cell").nth(CELL_TOPOLOGY))
    nb = nbformat.read(saved, as_version=4)
    mimes = {m for c in nb.cells for o in c.get("outputs", []) for m in o.get("data", {})}
    assert "application/vnd.jupyter.widget-view+json" not in mimes, "a saved output still points at a widget model"
    record = next(o for o in nb.cells[CELL_TOPOLOGY].outputs if "moa-panel" in str(o.get("data", {})))
    assert set(record.data) >= {"text/html", "text/plain"}
    assert "ok: 4 calls" in record.data["text/plain"] and "slow" in record.data["text/plain"]
    assert not [e for e in errors if "moa" in e.lower()], errors
    ctx.close()


def _check_fits_narrow(page: Page, ctx) -> None:
    """1024x768 with the file browser open: the panel's columns all within the output area."""
    page.page.set_viewport_size({"width": 1024, "height": 768})
    page.command("filebrowser:activate")
    page.wait("() => { const f = document.querySelector('#filebrowser'); return f && f.offsetWidth > 0; }",
              None, "the file browser to be open", "filebrowser")
    cell = page.page.locator(".jp-NotebookPanel .jp-Cell").nth(CELL_TOPOLOGY)
    cell.scroll_into_view_if_needed()
    page.page.wait_for_timeout(300)  # let the layout settle after the resize (a repaint, not a result)
    boxes = page.page.evaluate("""i => {
      const c = document.querySelectorAll('.jp-NotebookPanel .jp-Notebook .jp-Cell')[i];
      const p = c.querySelector('.moa-panel'), area = p.closest('.jp-OutputArea-output');
      const r = e => { const b = e.getBoundingClientRect(); return {left: b.left, right: b.right}; };
      return {area: r(area), panel: r(p), scroll: p.scrollWidth > p.clientWidth,
              heads: [...p.querySelectorAll('th')].map(th => ({name: th.innerText, ...r(th)}))};
    }""", CELL_TOPOLOGY)
    shot = page.shot("10-narrow-1024x768-filebrowser")
    area, panel = boxes["area"], boxes["panel"]
    width = area["right"] - area["left"]
    assert panel["right"] <= area["right"] + 1, (
        f"the panel ({panel}) overflows its output area ({area}, {width:.0f} px wide); see {shot}")
    if not boxes["scroll"]:
        cut = [h for h in boxes["heads"] if h["right"] > panel["right"] + 1]
        assert not cut, f"columns cut off at an output area {width:.0f} px wide, with no scrollbar: {cut}; see {shot}"
    page.page.set_viewport_size({"width": 1400, "height": 1000})


def _wait_saved(path: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if "moa-panel" in path.read_text():
                return
        except OSError:
            pass
        time.sleep(0.2)   # polling for the file the frontend writes
    pytest.fail(f"the notebook was not saved with its outputs to {path} within 60 s")


def _shutdown_kernels(lab: dict) -> None:
    base = f"{lab['url']}/api/kernels"
    headers = {"Authorization": f"token {lab['token']}"}
    with urllib.request.urlopen(urllib.request.Request(base, headers=headers), timeout=10) as resp:
        kernels = json.load(resp)
    for k in kernels:
        urllib.request.urlopen(urllib.request.Request(f"{base}/{k['id']}", method="DELETE", headers=headers),
                               timeout=30).close()


def _open_reloaded(page: Page) -> None:
    page.wait("() => window.jupyterapp && document.querySelectorAll('.jp-NotebookPanel .jp-Cell').length >= 7",
              None, "the reloaded notebook to show its cells", "reload")


def test_docs_screenshot_is_committed():
    """The README shows the panel as this test sees it (docs/panel.png, copied from a run's 03-done.png)."""
    assert (ROOT / "docs" / "panel.png").is_file()
    assert "docs/panel.png" in (ROOT / "README.md").read_text()
