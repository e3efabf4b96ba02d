"""The dashboard at /ui in a real headless Chromium (Debian's, driven by Playwright).

One fake-driver cluster on SQLite: the dashboard only talks to the /v1 API, which the other
tests run against both databases. Screenshots go to tests/artifacts/ui/.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import argon2
import pytest
from playwright.sync_api import Browser, Locator, Page, expect, sync_playwright

from harness import TESTS_DIR, Cluster
from usher.model import VM

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = TESTS_DIR / "artifacts" / "ui"
ALICE_PW = "alice-secret-pw"
TIMEOUT_MS = 15_000
TWO_OR_MORE = re.compile(r"^([2-9]|\d{2,})$")  # no wait_for_function: the page's CSP forbids eval

pytestmark = pytest.mark.timeout(240)


@pytest.fixture
def db_kind() -> str:
    """SQLite only: a browser run per database would double the time and test nothing new."""
    return "sqlite"


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if shutil.which(CHROMIUM) is None:
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium (test.sh does)")
    with sync_playwright() as p:
        found = p.chromium.launch(executable_path=CHROMIUM, headless=True)
        yield found
        found.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1500, "height": 950})
    context.set_default_timeout(TIMEOUT_MS)
    found = context.new_page()
    errors: list[str] = []
    found.on("pageerror", lambda exc: errors.append(str(exc)))
    yield found
    context.close()
    assert not errors, f"JavaScript errors in the dashboard: {errors}"


def shot(page: Page, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    print(f"screenshot: {path}")
    return path


@pytest.fixture
def site(make_cluster: Callable[..., Cluster]) -> Cluster:
    """Two fake nodes; alice (admin) logs in with a password; operators may not destroy."""
    users = {"alice": {"hash": argon2.PasswordHasher().hash(ALICE_PW), "roles": ["admin"]}}
    return make_cluster(
        nodes=2,
        plugins=["authz", "passwords"],
        plugin_tables={
            "passwords": {"users": users},
            "authz": {"operator_denied": ["vm.destroy", "node.drain", "node.undrain"]},
            "metrics": {"usage_interval": 1},
        },
    )


def row(page: Page, vm: VM) -> Locator:
    return page.locator(f'#vms tr[data-vm="{vm.id}"]')


def vm_action(page: Page, vm: VM, action: str) -> None:
    """Find ``vm``, select it alone and press the button of ``action`` (leaving a dialog it
    opens open, and the VM selected)."""
    page.fill("#f-search", vm.name)
    page.click("#f-apply")
    expect(page.locator("#vms tbody tr")).to_have_count(1)
    pick = page.locator(f'#vms tr[data-vm="{vm.id}"] input.pick')
    pick.check()
    expect(page.locator("#selected-count")).to_have_text("1 selected")
    page.click(f'#actions button[data-action="{action}"]')
    if action != "destroy":
        pick.uncheck()


def test_dashboard_shows_the_cluster_and_acts_live(site: Cluster, page: Page) -> None:
    admin = site.client()
    site.run(admin.create_vms(count=12, cluster="web", vcpus=1, memory_mb=64))
    vms = site.vms()  # in the API's order
    stopped, moving = vms[0], vms[1]
    site.run(admin.action("stop", [stopped.id]))

    page.goto(f"{site.url}/ui")
    page.fill("#login-user", "alice")
    page.fill("#login-password", ALICE_PW)
    page.click("#login-submit")
    expect(page.locator("#whoami")).to_contain_text("alice")
    expect(page.locator("#stream-status")).to_have_text("live")
    page.evaluate("window.__sameDocument = true")  # gone if anything reloads the page

    # nodes with their usage bars; VMs paged by the API's cursor
    expect(page.locator("#nodes tbody tr")).to_have_count(2)
    expect(page.locator('#nodes tr[data-node="node-1"] .bar')).to_have_count(4)
    page.select_option("#page-size", "10")
    expect(page.locator("#page-info")).to_have_text("1-10 of 12")
    page.click("#next")
    expect(page.locator("#page-info")).to_have_text("11-12 of 12")
    expect(page.locator("#vms tbody tr")).to_have_count(2)
    page.click("#prev")
    expect(page.locator("#vms tbody tr")).to_have_count(10)
    page.click('#vms th[data-sort="name"]')
    page.click('#vms th[data-sort="name"]')  # descending
    last_name = max(vm.name for vm in vms[:10])
    expect(page.locator("#vms tbody tr").first).to_have_attribute("data-name", last_name)
    page.select_option("#f-state", "stopped")
    page.click("#f-apply")
    expect(page.locator("#vms tbody tr")).to_have_count(1)
    expect(row(page, stopped)).to_be_visible()
    page.click("#f-clear")
    expect(page.locator("#page-info")).to_have_text("1-12 of 12")

    # a VM made elsewhere appears without a reload
    site.run(admin.create_vms(names=["late-1"], cluster="db", vcpus=1, memory_mb=64))
    expect(page.locator('#vms tr[data-name="late-1"]')).to_be_visible()

    # start a stopped VM, watch it run, stop it again; the events are in the feed (which
    # began with the events recorded before the login)
    started = page.locator(f'#events li[data-event="start"][data-vm="{stopped.id}"]')
    stops = page.locator(f'#events li[data-event="stop"][data-vm="{stopped.id}"]')
    expect(stops).to_have_count(1)
    before = started.count()
    vm_action(page, stopped, "start")
    expect(row(page, stopped).locator("td.state")).to_have_text("running")
    expect(started).to_have_count(before + 1)
    vm_action(page, stopped, "stop")
    expect(row(page, stopped).locator("td.state")).to_have_text("stopped")
    expect(stops).to_have_count(2)

    # live migration to the node picked in the list
    target = "node-2" if moving.node == "node-1" else "node-1"
    page.select_option("#migrate-target", target)
    vm_action(page, moving, "migrate")
    expect(row(page, moving).locator("td").nth(3)).to_have_text(target)
    assert site.client().get_vm(moving.id).node == target

    # usage charts of a node and of a VM (samples every second here)
    page.click('#nodes tr[data-node="node-1"]')
    expect(page.locator("#chart-title")).to_contain_text("node node-1")
    expect(page.locator("#charts")).to_have_attribute("data-points", TWO_OR_MORE)
    expect(page.locator("#charts svg polyline")).to_have_count(3)
    page.click(f'#vms tr[data-vm="{moving.id}"] td.clickable')
    expect(page.locator("#chart-title")).to_contain_text(f"VM {moving.name}")
    expect(page.locator("#charts")).to_have_attribute("data-points", TWO_OR_MORE)
    page.fill("#f-search", "")
    page.click("#f-apply")
    page.click('#nodes tr[data-node="node-1"]')
    expect(page.locator("#charts")).to_have_attribute("data-points", TWO_OR_MORE)
    shot(page, "dashboard")
    assert page.evaluate("window.__sameDocument") is True


def test_refused_actions_show_the_apis_error(site: Cluster, page: Page) -> None:
    admin = site.client()
    site.run(admin.create_vms(names=["keep-1"], vcpus=1, memory_mb=64))
    vm = admin.get_vm("keep-1")
    r = site.http("POST", "/v1/tokens", json={"principal": "olga", "roles": ["operator"]})
    assert r.status_code == 201, r.text
    olga = r.json()["token"]

    page.goto(f"{site.url}/ui/")
    page.fill("#login-token", "not-a-token")
    page.click("#login-submit")
    expect(page.locator("#login-error")).to_contain_text("invalid, expired or revoked token")
    page.fill("#login-token", olga)
    page.click("#login-submit")
    expect(page.locator("#whoami")).to_contain_text("olga (operator)")

    page.on("dialog", lambda d: d.dismiss())  # the dashboard must use its own dialog
    vm_action(page, vm, "destroy")
    expect(page.locator("#confirm")).to_be_visible()
    page.click("#confirm-yes")
    expect(page.locator("#messages .msg.error")).to_contain_text("olga may not vm.destroy")
    expect(row(page, vm).locator("td.state")).to_have_text("running")
    shot(page, "refused")
    assert site.client().get_vm(vm.id).state == "running"

    page.click("#logout")
    expect(page.locator("#login")).to_be_visible()
    assert page.evaluate("sessionStorage.getItem('usher.token')") is None
