"""The notebooks in a real browser: JupyterLab and Notebook 7, driven by Chromium.

Each front end (``python -m jupyterlab``, ``python -m notebook``) serves a temporary copy
of the repository (both autosave what they open) on 127.0.0.1 with a token; Debian's
Chromium, headless, driven by Playwright, opens a notebook, runs all cells and waits for
the kernel. The tests then look at the page as a user would: the report table, the
heatmap, the inspector widget and its tensor selector, the stall plot; no error output
anywhere. Every test runs once per front end.

Screenshots and the servers' logs are kept in test-artifacts/browser/ (gitignored; CI
keeps it as an artifact), named ``<front end>-<view>.png``; each test prints the paths.
Every wait polls a condition with a timeout and, when it runs out, says what was missing.

Skipped, with the reason, only where /usr/bin/chromium is missing (CI installs it:
`apt-get install chromium`; Playwright comes with the test extra and drives it).
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
from playwright import sync_api

CHROMIUM = Path("/usr/bin/chromium")
if not CHROMIUM.exists():
    pytest.skip(
        "the browser test needs Debian's Chromium at /usr/bin/chromium (apt-get install chromium)",
        allow_module_level=True,
    )

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts" / "browser"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# Generous: two busy cores start a server, a browser and kernels. Nothing waits this
# long when all is well.
SERVER_START_S = 90
KERNEL_IDLE_MS = 90_000
RUN_ALL_MS = 120_000
RENDER_MS = 30_000
# Folders of the repository the served copy leaves out.
NOT_SERVED = (
    ".git",
    ".venv",
    "venv",
    "test-artifacts",
    "__pycache__",
    ".pytest_cache",
    ".ruff_cache",
    ".hypothesis",
    "*.egg-info",
    "build",
    "dist",
    ".ipynb_checkpoints",
    ".mypy_cache",
)
# User settings, read by both front ends (Notebook 7 is built from JupyterLab's plugins).
SETTINGS = {
    # A news/update toast would cover the page.
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {
        "fetchNews": "false",
        "checkForUpdates": False,
    },
    # Every cell stays in the DOM (no virtual scrolling of cells out of view).
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
}

STDERR_OUTPUT = '.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]'


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def write_settings(settings_dir: Path) -> None:
    for relative, values in SETTINGS.items():
        path = settings_dir / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))


@dataclass(frozen=True)
class Frontend:
    """A Jupyter front end: how to start it and how it opens a notebook."""

    name: str  # in test ids and file names
    title: str  # in messages
    module: str  # started as `python -m <module>`
    app: str  # its application class, for the settings options
    open_path: str  # URL path that opens the notebook {path}, with {token}


FRONTENDS = (
    # `reset`: a fresh workspace, without the tabs an earlier test left open.
    Frontend("lab", "JupyterLab", "jupyterlab", "LabApp", "/lab/tree/{path}?token={token}&reset"),
    Frontend(
        "notebook7",
        "Notebook 7",
        "notebook",
        "JupyterNotebookApp",
        "/notebooks/{path}?token={token}",
    ),
)


@dataclass(frozen=True)
class Server:
    """A running front end: its base URL and token."""

    frontend: Frontend
    url: str
    token: str

    def notebook_url(self, path: str) -> str:
        return self.url + self.frontend.open_path.format(path=path, token=self.token)


def wait_for_server(server: Server, process: subprocess.Popen, log: Path) -> None:
    """Poll /api/status until it answers; fail with the server's log if it does not."""
    url, title = f"{server.url}/api/status?token={server.token}", server.frontend.title
    deadline = time.monotonic() + SERVER_START_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"{title} exited with {process.returncode}:\n{log.read_text()}")
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    pytest.fail(f"{title} did not answer {url} in {SERVER_START_S} s:\n{log.read_text()}")


def server_command(frontend: Frontend, port: int, token: str, served: Path, jupyter: Path):
    return [
        sys.executable,
        "-m",
        frontend.module,
        "--no-browser",
        "--allow-root",
        "--ip=127.0.0.1",
        f"--port={port}",
        f"--IdentityProvider.token={token}",
        f"--ServerApp.root_dir={served}",
        f"--{frontend.app}.user_settings_dir={jupyter / 'settings'}",
        f"--{frontend.app}.workspaces_dir={jupyter / 'workspaces'}",
        "--expose-app-in-browser",
    ]


@pytest.fixture(scope="module", params=FRONTENDS, ids=lambda frontend: frontend.name)
def server(request, tmp_path_factory):
    frontend = request.param
    served = tmp_path_factory.mktemp("served") / "repo"
    shutil.copytree(ROOT, served, ignore=shutil.ignore_patterns(*NOT_SERVED), symlinks=True)
    jupyter = tmp_path_factory.mktemp("jupyter")
    write_settings(jupyter / "settings")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    log = ARTIFACTS / f"{frontend.name}-server.log"
    port, token = free_port(), secrets.token_hex(16)
    environment = {
        **os.environ,
        "JUPYTER_CONFIG_DIR": str(jupyter / "config"),
        "JUPYTER_RUNTIME_DIR": str(jupyter / "runtime"),
        "MPLBACKEND": "module://matplotlib_inline.backend_inline",
    }
    command = server_command(frontend, port, token, served, jupyter)
    with log.open("w") as log_file:
        process = subprocess.Popen(
            command, stdout=log_file, stderr=subprocess.STDOUT, env=environment, cwd=served
        )
    try:
        running = Server(frontend, f"http://127.0.0.1:{port}", token)
        wait_for_server(running, process, log)
        yield running
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=20)


class Screenshots:
    """Screenshots of one test, named after the front end; the paths are kept to print."""

    def __init__(self, frontend: Frontend) -> None:
        self.frontend = frontend
        self.paths: list[Path] = []

    def take(self, target, view: str) -> Path:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS / f"{self.frontend.name}-{view}.png"
        target.screenshot(path=str(path))
        self.paths.append(path)
        return path


@pytest.fixture
def screenshots(server, capsys):
    taken = Screenshots(server.frontend)
    yield taken
    with capsys.disabled():
        for path in taken.paths:
            print(f"\nscreenshot ({server.frontend.title}): {path.relative_to(ROOT)}", end="")
        print()


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser, request, screenshots):
    context = browser.new_context(viewport={"width": 1400, "height": 1300})
    try:
        page = context.new_page()
        yield page
        # What the page showed last, also (above all) when the test failed.
        screenshots.take(page, f"{request.node.originalname.removeprefix('test_')}-last-view")
        # Free the CPU for the next notebook (the server stops the rest at the end).
        with contextlib.suppress(sync_api.Error):
            page.evaluate("window.jupyterapp.serviceManager.sessions.shutdownAll()")
    finally:
        context.close()


# -- driving the front end (JupyterLab's objects, in both) ---------------------------------

KERNEL_IDLE = """path => {
    const panel = window.jupyterapp && window.jupyterapp.shell.currentWidget;
    if (!panel || !panel.context || panel.context.path !== path) return false;
    const kernel = panel.sessionContext.session && panel.sessionContext.session.kernel;
    return !!kernel && kernel.status === 'idle' && panel.content.widgets.length > 0;
}"""

# Done when the kernel is idle, a code cell has run and none is queued or running (run-all
# marks every queued cell [*] at once; after an error the rest are left unqueued), and that
# has held for `held` ms (the kernel goes idle for a moment between cells).
RUN_FINISHED = """held => {
    const panel = window.jupyterapp.shell.currentWidget;
    const kernel = panel.sessionContext.session.kernel;
    const cells = panel.content.model.cells;
    let ran = false;
    for (let i = 0; i < cells.length; i++) {
        const cell = cells.get(i);
        if (cell.type === 'code' && cell.executionCount !== null) ran = true;
    }
    const prompts = [...panel.node.querySelectorAll('.jp-InputPrompt')];
    const done = ran && kernel.status === 'idle'
        && !prompts.some(p => p.textContent.includes('*'));
    if (!done) {
        window.nbgradcheckFinishedSince = undefined;
        return false;
    }
    window.nbgradcheckFinishedSince ??= performance.now();
    return performance.now() - window.nbgradcheckFinishedSince >= held;
}"""
FINISHED_HELD_MS = 1000

NOT_RUN = """() => {
    const cells = window.jupyterapp.shell.currentWidget.content.model.cells;
    const left = [];
    for (let i = 0; i < cells.length; i++) {
        const cell = cells.get(i);
        if (cell.type === 'code' && cell.executionCount === null
            && cell.sharedModel.getSource().trim()) left.push(i + 1);
    }
    return left;
}"""

ERROR_OUTPUTS = """() => {
    const cells = window.jupyterapp.shell.currentWidget.content.model.cells;
    const errors = [];
    for (let i = 0; i < cells.length; i++) {
        const cell = cells.get(i);
        if (cell.type !== 'code') continue;
        for (let j = 0; j < cell.outputs.length; j++) {
            const output = cell.outputs.get(j).toJSON();
            if (output.output_type === 'error') {
                errors.push(`cell ${i + 1}: ${output.ename}: ${output.evalue}`);
            }
        }
    }
    return errors;
}"""

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def wait_until(page, condition: str, missing: str, timeout_ms: int, arg=None) -> None:
    """Poll a JavaScript condition; when it times out, fail saying what was missing."""
    try:
        page.wait_for_function(condition, arg=arg, timeout=timeout_ms, polling=250)
    except sync_api.TimeoutError:
        pytest.fail(f"{missing} (waited {timeout_ms / 1000:.0f} s)", pytrace=False)


def wait_visible(locator, missing: str) -> None:
    """Wait until the locator's first element is visible, else fail saying what is missing."""
    try:
        locator.first.wait_for(state="visible", timeout=RENDER_MS)
    except sync_api.TimeoutError:
        pytest.fail(f"{missing} (waited {RENDER_MS / 1000:.0f} s)", pytrace=False)


def open_and_run(page, server: Server, path: str):
    """Open the notebook, wait for its kernel, run all cells, wait until they are done.

    Returns the notebook panel (a locator): what the test looks at.
    """
    title = server.frontend.title
    page.goto(server.notebook_url(path))
    wait_until(
        page, KERNEL_IDLE, f"{title}: {path} did not open with an idle kernel", KERNEL_IDLE_MS, path
    )
    notebook = page.locator("#" + page.evaluate("window.jupyterapp.shell.currentWidget.id"))
    page.evaluate("window.jupyterapp.commands.execute('notebook:run-all-cells')")
    wait_until(
        page,
        RUN_FINISHED,
        f"{title}: {path} was still running (or its kernel busy)",
        RUN_ALL_MS,
        FINISHED_HELD_MS,
    )
    not_run = page.evaluate(NOT_RUN)
    if not_run:  # the page fixture saves the screenshot
        pytest.fail(
            f"{path}: run-all stopped; code cells {not_run} did not run. "
            f"Errors: {error_texts(page, notebook)}"
        )
    return notebook


def error_texts(page, notebook) -> list[str]:
    """Error outputs, and stderr outputs that carry a traceback or an error."""
    errors = page.evaluate(ERROR_OUTPUTS)
    stderr = [
        text.strip()
        for text in notebook.locator(STDERR_OUTPUT).all_inner_texts()
        if "Traceback" in text or "Error" in text
    ]
    return errors + stderr


def assert_no_error_output(page, notebook, name: str) -> None:
    errors = error_texts(page, notebook)
    broken_widgets = notebook.get_by_text("Error displaying widget").count()
    assert not errors, f"{name}: error output {errors}"
    assert not broken_widgets, f"{name}: a widget failed to render"


def shown_tensor(inspector) -> str:
    """The tensor the inspector's worst-elements table is about."""
    caption = inspector.get_by_text(re.compile(r"^Worst elements of ")).first.inner_text()
    return re.match(r"Worst elements of (\S+)", caption).group(1)


def png_bytes(image) -> bytes:
    """The PNG an <img> shows (a data: URL or a blob)."""
    src = image.get_attribute("src")
    if src.startswith("data:image/png;base64,"):
        return base64.b64decode(src.split(",", 1)[1])
    return bytes(
        image.evaluate(
            "async img => Array.from(new Uint8Array(await (await fetch(img.src)).arrayBuffer()))"
        )
    )


def stall_shading(png: bytes) -> float:
    """The share of the figure's pixels in the stall colour, blended over white.

    A span drawn with opacity a turns white into 1 − a·(1 − c) per channel (c the stall
    colour): every channel that the colour darkens must give the same a.
    """
    import matplotlib.colors
    import matplotlib.image
    import numpy as np

    from nbgradcheck.views.lossplot import STALL_COLOR

    pixels = matplotlib.image.imread(io.BytesIO(png), format="png")[..., :3]
    colour = np.array(matplotlib.colors.to_rgb(STALL_COLOR))
    darkened = 1 - colour > 0.1
    opacity = (1 - pixels[..., darkened]) / (1 - colour[darkened])
    blended = (
        (opacity.max(axis=-1) - opacity.min(axis=-1) < 0.04)
        & (opacity.mean(axis=-1) > 0.05)
        & (opacity.mean(axis=-1) < 0.6)
        & np.all(np.abs(pixels[..., ~darkened] - 1) < 0.04, axis=-1)
    )
    return float(blended.mean())


def assert_png(image, what: str) -> None:
    """The <img> is visible, loaded and shows a PNG."""
    wait_visible(image, f"{what}: no image shown")
    wait_until(
        image.page,
        "img => img.complete && img.naturalWidth > 50",
        f"{what}: the image did not load",
        RENDER_MS,
        image.element_handle(),
    )
    assert png_bytes(image)[:8] == PNG_SIGNATURE, f"{what}: the image is not a PNG"


# -- the tests -------------------------------------------------------------------------------


def test_quickstart_shows_the_report_and_a_working_inspector(page, server, screenshots):
    title = server.frontend.title
    notebook = open_and_run(page, server, "notebooks/quickstart.ipynb")

    inspector = (
        notebook.locator(".jp-OutputArea-output .widget-vbox")
        .filter(has=page.locator(".widget-select select"))
        .first
    )
    wait_visible(inspector, f"{title}: no inspector widget (a box with a tensor selector)")
    selector = inspector.locator(".widget-select select")
    heatmap = inspector.locator("img.widget-image")
    worst_table = inspector.locator(".widget-html table")
    assert_png(heatmap, f"{title}: the inspector's heatmap")
    wait_visible(worst_table, f"{title}: no worst-elements table in the inspector")
    inspector.scroll_into_view_if_needed()
    screenshots.take(page, "quickstart-notebook")
    screenshots.take(inspector, "quickstart-inspector")

    # Options read "✘ W2 · wrong · 3.3e-01", shown with no-break spaces (str.split splits
    # at them, and compares them with the option values); the worst-elements caption
    # names the tensor shown.
    labels = selector.locator("option").all_inner_texts()
    assert any("W2" in label.split() for label in labels), f"{title}: no W2 in {labels}"
    assert any("b1" in label.split() for label in labels), f"{title}: no b1 in {labels}"
    shown = selector.input_value()
    assert shown_tensor(inspector) in shown.split()
    heatmap_before = heatmap.get_attribute("src")

    # Pick another tensor: the heatmap and the worst-elements table follow.
    other = next(label for label in labels if label.split() != shown.split())
    selector.select_option(label=other)
    assert selector.input_value().split() == other.split()
    wait_until(
        page,
        "([img, before]) => img.getAttribute('src') !== before",
        f"{title}: the heatmap did not change after selecting {other!r}",
        RENDER_MS,
        [heatmap.element_handle(), heatmap_before],
    )
    assert_png(heatmap, f"{title}: the heatmap of {other!r}")
    wait_until(
        page,
        "([node, label]) => { const m = node.innerText.match(/Worst elements of (\\S+)/);"
        " return !!m && label.split(/\\s+/).includes(m[1]); }",
        f"{title}: the worst-elements table is not about {other!r} after selecting it",
        RENDER_MS,
        [inspector.element_handle(), other],
    )
    screenshots.take(inspector, "quickstart-inspector-after-select")

    # The static report (--no-widget): the table of tensors with their verdicts.
    report_tables = notebook.locator(".jp-OutputArea-output").filter(
        has=page.locator(".nbgradcheck-result table")
    )
    wait_visible(report_tables, f"{title}: no static report table (--no-widget)")
    assert "verdict" in report_tables.first.inner_text(), f"{title}: no verdict column"
    screenshots.take(report_tables.first, "quickstart-report")
    assert_no_error_output(page, notebook, f"{title}: quickstart")


def test_training_stalls_shows_the_loss_plot(page, server, screenshots):
    title = server.frontend.title
    notebook = open_and_run(page, server, "notebooks/training_stalls.ipynb")
    plots = notebook.locator(".jp-OutputArea-output.jp-RenderedImage img")
    wait_visible(plots, f"{title}: no loss plot (a PNG output) in training_stalls")
    for index in range(plots.count()):
        assert_png(plots.nth(index), f"{title}: loss plot {index + 1}")
    shaded = [stall_shading(png_bytes(plots.nth(index))) for index in range(plots.count())]
    # The stalls are shaded spans: a few percent of a loss plot's pixels at least.
    assert max(shaded) > 0.02, f"{title}: no shaded stall spans in the loss plots ({shaded})"
    plots.first.scroll_into_view_if_needed()
    screenshots.take(plots.first, "training-stalls-plot")
    assert_no_error_output(page, notebook, f"{title}: training_stalls")
