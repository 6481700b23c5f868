"""Export the example workflows in ComfyUI's UI format, and a screenshot of workflow (a), from a live page.

A development tool (not installed with the package). Start ComfyUI with this pack linked into
its custom_nodes (as tests/test_comfyui_server.py does), then:

    python tools/comfyui_export.py --url http://127.0.0.1:8188

It needs Playwright for Python (pip install playwright) and Debian's Chromium (/usr/bin/chromium);
no browser is downloaded. Each file in example_workflows/api/ is loaded into the page with the
frontend's own API-to-graph conversion, queued (so the screenshot shows the outputs) and saved as
example_workflows/<name>.json; the first one's screenshot goes to docs/comfyui_apply_workflow.png.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from playwright.sync_api import sync_playwright

REPO = Path(__file__).resolve().parents[1]
SCREENSHOT_OF = "apply_tuned_set_ksampler"
# Seeds stay as written (templates reproduce), not randomised after each run.
FIXED_SEEDS = """() => { for (const n of window.app.graph._nodes) for (const w of (n.widgets || []))
    if (w.name === 'control_after_generate') w.value = 'fixed'; }"""
# Scale and offset the canvas so every node is in view, left of the minimap.
FIT_VIEW = """() => { const app = window.app; let x0 = Infinity, y0 = Infinity, x1 = -Infinity, y1 = -Infinity;
    for (const n of app.graph._nodes) { x0 = Math.min(x0, n.pos[0]); y0 = Math.min(y0, n.pos[1] - 40);
        x1 = Math.max(x1, n.pos[0] + n.size[0]); y1 = Math.max(y1, n.pos[1] + n.size[1]); }
    const w = app.canvas.canvas.clientWidth - 140, h = app.canvas.canvas.clientHeight - 60;
    const s = Math.min(w / (x1 - x0), h / (y1 - y0), 1.2);
    app.canvas.ds.scale = s; app.canvas.ds.offset = [90 / s - x0, 30 / s - y0]; app.canvas.setDirty(true, true); }"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    args = parser.parse_args()
    flags = [
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
    ]
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=args.chromium, args=flags)
        page = browser.new_page(viewport={"width": 1800, "height": 760})
        for api_file in sorted((REPO / "example_workflows" / "api").glob("*.json")):
            page.goto(args.url)
            page.wait_for_function("() => window.app && window.app.graph && window.app.canvas", timeout=120_000)
            api = json.loads(api_file.read_text())
            page.evaluate("async ([api, name]) => { await window.app.loadApiJson(api, name); }", [api, api_file.stem])
            page.evaluate(FIXED_SEEDS)
            ui = page.evaluate("() => window.app.graph.serialize()")
            out = REPO / "example_workflows" / api_file.name
            out.write_text(json.dumps(ui, indent=1) + "\n")
            print(f"wrote {out}")
            if api_file.stem == SCREENSHOT_OF:
                page.evaluate("async () => { await window.app.queuePrompt(0, 1); }")
                page.wait_for_function(
                    "() => window.app.graph._nodes.some(n => n.imgs && n.imgs.length)", timeout=300_000
                )
                page.evaluate(FIT_VIEW)
                page.wait_for_timeout(1500)
                shot = REPO / "docs" / "comfyui_apply_workflow.png"
                page.screenshot(path=str(shot))
                print(f"wrote {shot}")
        browser.close()


if __name__ == "__main__":
    main()
