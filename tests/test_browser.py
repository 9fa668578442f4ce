"""The notebooks in a real browser: JupyterLab driven by Chromium through Playwright.

JupyterLab serves a temporary copy of the repository (Lab autosaves what it opens) on
127.0.0.1 with a token; Debian's Chromium, headless, opens a notebook, runs all cells
and waits for the kernel. The tests then look at the page as a user would: the report
table, the heatmap, the inspector widget and its tensor selector, the stall plot; no
error output anywhere. Screenshots are saved in test-artifacts/ (gitignored).

Skipped, with the reason, only where /usr/bin/chromium or Python's playwright is
missing (CI installs both: `apt-get install chromium`, `pip install playwright`).
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
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
if not CHROMIUM.exists():
    pytest.skip(
        "the browser test needs Debian's Chromium at /usr/bin/chromium (apt-get install chromium)",
        allow_module_level=True,
    )
sync_api = pytest.importorskip(
    "playwright.sync_api",
    reason="the browser test needs Python's playwright (pip install playwright)",
)

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts"
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
LAB_SETTINGS = {
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


def write_lab_settings(settings_dir: Path) -> None:
    for relative, values in LAB_SETTINGS.items():
        path = settings_dir / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))


def wait_for_server(url: str, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + SERVER_START_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"JupyterLab exited with {process.returncode}:\n{log.read_text()}")
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    pytest.fail(f"JupyterLab did not answer {url} in {SERVER_START_S} s:\n{log.read_text()}")


class Lab:
    """A running JupyterLab: its base URL and token."""

    def __init__(self, url: str, token: str) -> None:
        self.url, self.token = url, token

    def notebook_url(self, path: str) -> str:
        return f"{self.url}/lab/tree/{path}?token={self.token}"


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    served = tmp_path_factory.mktemp("served") / "repo"
    shutil.copytree(ROOT, served, ignore=shutil.ignore_patterns(*NOT_SERVED), symlinks=True)
    jupyter = tmp_path_factory.mktemp("jupyter")
    settings = jupyter / "settings"
    write_lab_settings(settings)
    ARTIFACTS.mkdir(exist_ok=True)
    log = ARTIFACTS / "jupyterlab.log"
    port, token = free_port(), secrets.token_hex(16)
    environment = {
        **os.environ,
        "JUPYTER_CONFIG_DIR": str(jupyter / "config"),
        "JUPYTER_RUNTIME_DIR": str(jupyter / "runtime"),
        "MPLBACKEND": "module://matplotlib_inline.backend_inline",
    }
    command = [
        sys.executable,
        "-m",
        "jupyterlab",
        "--no-browser",
        "--allow-root",
        "--ip=127.0.0.1",
        f"--port={port}",
        f"--IdentityProvider.token={token}",
        f"--ServerApp.root_dir={served}",
        f"--LabApp.user_settings_dir={settings}",
        f"--LabApp.workspaces_dir={jupyter / 'workspaces'}",
        "--expose-app-in-browser",
    ]
    with log.open("w") as log_file:
        process = subprocess.Popen(
            command, stdout=log_file, stderr=subprocess.STDOUT, env=environment, cwd=served
        )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for_server(f"{url}/api/status?token={token}", process, log)
        yield Lab(url, token)
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=20)


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
def page(browser, request):
    context = browser.new_context(viewport={"width": 1400, "height": 1300})
    try:
        page = context.new_page()
        yield page
        # What the page showed last, also (above all) when the test failed.
        screenshot(page, f"{request.node.name.removeprefix('test_')}-last-view")
        # Free the CPU for the next notebook (the server stops the rest at the end).
        with contextlib.suppress(sync_api.Error):
            page.evaluate("window.jupyterapp.serviceManager.sessions.shutdownAll()")
    finally:
        context.close()


# -- driving JupyterLab ------------------------------------------------------------------

KERNEL_IDLE = """path => {
    const panel = window.jupyterapp && window.jupyterapp.shell.currentWidget;
    if (!panel || !panel.context || panel.context.path !== path) return false;
    const kernel = panel.sessionContext.session && panel.sessionContext.session.kernel;
    return !!kernel && kernel.status === 'idle' && panel.content.widgets.length > 0;
}"""

# Done when the kernel is idle, a code cell has run and none is queued or running (run-all
# marks every queued cell [*] at once; after an error the rest are left unqueued).
RUN_FINISHED = """() => {
    const panel = window.jupyterapp.shell.currentWidget;
    const kernel = panel.sessionContext.session.kernel;
    const cells = panel.content.model.cells;
    let ran = false;
    for (let i = 0; i < cells.length; i++) {
        const cell = cells.get(i);
        if (cell.type === 'code' && cell.executionCount !== null) ran = true;
    }
    const prompts = [...panel.node.querySelectorAll('.jp-InputPrompt')];
    return ran && kernel.status === 'idle' && !prompts.some(p => p.textContent.includes('*'));
}"""

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


def open_and_run(page, lab: Lab, path: str):
    """Open the notebook, wait for its kernel, run all cells, wait until they are done.

    Returns the notebook panel (a locator): what the test looks at.
    """
    # `reset`: a fresh workspace, without the tabs an earlier test left open.
    page.goto(lab.notebook_url(path) + "&reset")
    page.wait_for_function(KERNEL_IDLE, arg=path, timeout=KERNEL_IDLE_MS, polling=250)
    notebook = page.locator("#" + page.evaluate("window.jupyterapp.shell.currentWidget.id"))
    page.evaluate("window.jupyterapp.commands.execute('notebook:run-all-cells')")
    page.wait_for_function(RUN_FINISHED, timeout=RUN_ALL_MS, polling=250)
    page.wait_for_timeout(1000)  # the finished state must hold
    page.wait_for_function(RUN_FINISHED, timeout=RUN_ALL_MS, polling=250)
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


def screenshot(target, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"browser-{name}.png"
    target.screenshot(path=str(path))
    return path


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


def assert_png(image) -> None:
    image.wait_for(state="visible", timeout=RENDER_MS)
    image.page.wait_for_function(
        "img => img.complete && img.naturalWidth > 50",
        arg=image.element_handle(),
        timeout=RENDER_MS,
    )
    assert png_bytes(image)[:8] == PNG_SIGNATURE


# -- the tests -------------------------------------------------------------------------------


def test_quickstart_shows_the_report_and_a_working_inspector(page, lab):
    notebook = open_and_run(page, lab, "notebooks/quickstart.ipynb")

    inspector = (
        notebook.locator(".jp-OutputArea-output .widget-vbox")
        .filter(has=page.locator(".widget-select select"))
        .first
    )
    inspector.wait_for(state="visible", timeout=RENDER_MS)
    selector = inspector.locator(".widget-select select")
    heatmap = inspector.locator("img.widget-image")
    worst_table = inspector.locator(".widget-html table").first
    assert_png(heatmap)
    worst_table.wait_for(state="visible", timeout=RENDER_MS)
    inspector.scroll_into_view_if_needed()
    screenshot(page, "quickstart-notebook")
    screenshot(inspector, "quickstart-inspector")

    # Options read "✘ W2 · wrong · 3.3e-01", shown with no-break spaces (str.split splits
    # at them, and compares them with the option values); the worst-elements caption
    # names the tensor shown.
    labels = selector.locator("option").all_inner_texts()
    assert any("W2" in label.split() for label in labels), labels
    assert any("b1" in label.split() for label in labels), labels
    shown = selector.input_value()
    assert shown_tensor(inspector) in shown.split()
    heatmap_before = heatmap.get_attribute("src")

    # Pick another tensor: the heatmap and the worst-elements table follow.
    other = next(label for label in labels if label.split() != shown.split())
    selector.select_option(label=other)
    assert selector.input_value().split() == other.split()
    page.wait_for_function(
        "([img, before]) => img.getAttribute('src') !== before",
        arg=[heatmap.element_handle(), heatmap_before],
        timeout=RENDER_MS,
    )
    assert_png(heatmap)
    page.wait_for_function(
        "([node, label]) => { const m = node.innerText.match(/Worst elements of (\\S+)/);"
        " return !!m && label.split(/\\s+/).includes(m[1]); }",
        arg=[inspector.element_handle(), other],
        timeout=RENDER_MS,
    )
    screenshot(inspector, "quickstart-inspector-after-select")

    # The static report (--no-widget): the table of tensors with their verdicts.
    report_tables = notebook.locator(".jp-OutputArea-output").filter(
        has=page.locator(".nbgradcheck-result table")
    )
    assert report_tables.count() >= 1
    assert "verdict" in report_tables.first.inner_text()
    screenshot(report_tables.first, "quickstart-report")
    assert_no_error_output(page, notebook, "quickstart")


def test_training_stalls_shows_the_loss_plot(page, lab):
    notebook = open_and_run(page, lab, "notebooks/training_stalls.ipynb")
    plots = notebook.locator(".jp-OutputArea-output.jp-RenderedImage img")
    plots.first.wait_for(state="visible", timeout=RENDER_MS)
    for index in range(plots.count()):
        assert_png(plots.nth(index))
    shaded = [stall_shading(png_bytes(plots.nth(index))) for index in range(plots.count())]
    # The stalls are shaded spans: a few percent of a loss plot's pixels at least.
    assert max(shaded) > 0.02, f"no shaded stall spans in the loss plots ({shaded})"
    plots.first.scroll_into_view_if_needed()
    screenshot(plots.first, "training-stalls-plot")
    assert_no_error_output(page, notebook, "training-stalls")
