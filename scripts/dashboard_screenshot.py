"""Take the README's screenshot of the dashboard (docs/dashboard.png).

    .venv/bin/python scripts/dashboard_screenshot.py [OUT.png]

Starts a throwaway cluster (a controller and three fake-driver LNMs, through the test
harness), gives it some VMs in a few states, lets the usage history fill for a while, and
photographs /ui in Debian's headless Chromium.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from playwright.sync_api import sync_playwright

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from harness import Cluster  # noqa: E402

SAMPLE_SECONDS = 40


def populate(cluster: Cluster) -> None:
    client = cluster.client()
    for name, count, vcpus, memory in (("web", 12, 1, 512), ("db", 3, 2, 2048), ("ci", 6, 1, 256)):
        cluster.run(client.create_vms(count=count, cluster=name, vcpus=vcpus, memory_mb=memory))
    vms = {vm.name: vm.id for vm in cluster.vms()}
    cluster.run(client.action("stop", [vms["ci-5"], vms["ci-6"]]))
    cluster.run(client.action("pause", [vms["web-12"]]))


def main(out: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        cluster = Cluster(Path(tmp), None, plugin_tables={"metrics": {"usage_interval": 1}})
        cluster.add_blank_image()
        try:
            cluster.start_ctrl()
            for i in (1, 2, 3):
                cluster.start_lnm(f"node-{i}", vcpus=16, memory_mb=32768)
            populate(cluster)
            time.sleep(SAMPLE_SECONDS)
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path="/usr/bin/chromium")
                page = browser.new_page(viewport={"width": 1500, "height": 900})
                page.goto(f"{cluster.url}/ui/")
                page.fill("#login-token", cluster.token)
                page.click("#login-submit")
                page.wait_for_selector("#vms tbody tr")
                page.click("#show-usage")
                page.click('#nodes tr[data-node="node-1"]')
                page.wait_for_selector("#charts svg polyline")
                # a live migration between the two nodes not charted, for the event feed
                moved = next(vm for vm in cluster.vms(cluster="db") if vm.node == "node-3")
                client = cluster.client()
                cluster.run(client.action("migrate", [moved.id], target_node="node-2"))
                page.wait_for_timeout(1500)
                page.screenshot(path=str(out))
                browser.close()
        finally:
            cluster.stop()
    print(f"wrote {out}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else REPO / "docs" / "dashboard.png")
