"""The dashboard at /ui in a real headless Chromium (Debian's, driven by Playwright).

Fake-driver clusters on SQLite (the dashboard only talks to the /v1 API, which the other
tests run against both databases), and one real QEMU guest. Screenshots go to
tests/artifacts/ui/.
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
from test_e2e_qemu import tiny_storage
from usher.model import VM, VMState

__all__ = ["tiny_storage"]  # the image fixture, shared with the QEMU tests

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = TESTS_DIR / "artifacts" / "ui"
ALICE_PW = "alice-secret-pw"
TIMEOUT_MS = 15_000
FAST_SAMPLES = {"metrics": {"usage_interval": 1}}
TWO_OR_MORE = re.compile(r"^([2-9]|\d{2,})$")  # no wait_for_function: the page's CSP forbids eval

pytestmark = pytest.mark.timeout(240)
expect.set_options(timeout=TIMEOUT_MS)


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
    # the journey runs over HTTPS with the controller's generated CA, which Chromium does not
    # know: its certificate errors are ignored (the page and its API calls are same-origin)
    context = browser.new_context(viewport={"width": 1500, "height": 950}, ignore_https_errors=True)
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
    """Two fake nodes behind HTTPS (the default); alice (admin) logs in with a password;
    operators may not destroy."""
    users = {"alice": {"hash": argon2.PasswordHasher().hash(ALICE_PW), "roles": ["admin"]}}
    return make_cluster(
        nodes=2,
        settings={"tls": True},
        plugins=["authz", "passwords"],
        plugin_tables={
            "passwords": {"users": users},
            "authz": {"operator_denied": ["vm.destroy", "node.drain", "node.undrain"]},
            **FAST_SAMPLES,
        },
    )


def row(page: Page, vm: VM) -> Locator:
    return page.locator(f'#vms tr[data-vm="{vm.id}"]')


def vm_action(page: Page, vm: VM, action: str) -> None:
    """Find ``vm``, select it alone and press the button of ``action`` (leaving a dialog it
    opens open, and the VM selected)."""
    page.fill("#f-search", vm.name)
    page.click("#f-apply")
    expect(page.locator("#vms tbody tr").first).to_have_attribute("data-name", vm.name)
    pick = page.locator(f'#vms tr[data-vm="{vm.id}"] input.pick')
    pick.check()
    expect(page.locator("#selected-count")).to_have_text("1 selected")
    page.click(f'#actions button[data-action="{action}"]')
    if action != "destroy":
        pick.uncheck()


def check_static_files(site: Cluster) -> None:
    """The page's files come from the package, with a policy that allows only them."""
    r = site.http("GET", "/ui", token=None, follow_redirects=False)
    assert r.status_code == 308 and r.headers["location"] == "/ui/"
    r = site.http("GET", "/", token=None, follow_redirects=False)
    assert r.status_code == 307 and r.headers["location"] == "/ui/"
    for name, kind in (("", "text/html"), ("app.js", "text/javascript"), ("app.css", "text/css")):
        r = site.http("GET", f"/ui/{name}", token=None)
        assert r.status_code == 200 and r.headers["content-type"].startswith(kind)
        assert r.headers["content-security-policy"].startswith("default-src 'self'")
    assert site.http("GET", "/ui/__init__.py", token=None).status_code == 404


def check_refusals(site: Cluster, page: Page, vm: VM) -> None:
    """Logged in with a token as an operator, who may not destroy: the API's error shows."""
    r = site.http("POST", "/v1/tokens", json={"principal": "olga", "roles": ["operator"]})
    assert r.status_code == 201, r.text
    olga = r.json()["token"]

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
    refusal = page.locator("#messages .msg.error", has_text="olga may not vm.destroy")
    expect(refusal).to_be_visible()
    # nothing left over from the session that ended (its answers are dropped)
    expect(page.locator("#messages .msg.error")).to_have_count(1)
    expect(row(page, vm).locator("td.state")).to_have_text("running")
    shot(page, "refused")
    assert site.client().get_vm(vm.id).state == "running"


def test_dashboard_shows_the_cluster_acts_live_and_shows_refusals(
    site: Cluster, page: Page
) -> None:
    admin = site.client()
    site.run(admin.create_vms(count=12, cluster="web", vcpus=1, memory_mb=64))
    vms = site.vms()  # in the API's order
    stopped, moving = vms[0], vms[1]
    site.run(admin.action("stop", [stopped.id]))

    check_static_files(site)
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
    page.click('#vms th[data-sort="name"]')  # descending, by the server, over all pages
    names = sorted(vm.name for vm in vms)
    expect(page.locator("#vms tbody tr").first).to_have_attribute("data-name", names[-1])
    page.click("#next")
    expect(page.locator("#vms tbody tr").last).to_have_attribute("data-name", names[0])
    page.click('#vms th[data-sort="name"]')
    expect(page.locator("#page-info")).to_have_text("1-10 of 12")
    expect(page.locator("#vms tbody tr").first).to_have_attribute("data-name", names[0])
    page.fill("#f-search", "EB-1")  # any case, part of the name: web-1, web-10, web-11, web-12
    page.click("#f-apply")
    expect(page.locator("#page-info")).to_have_text("1-4 of 4")
    page.fill("#f-search", "")
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

    session = page.evaluate("sessionStorage.getItem('usher.token')")
    page.click("#logout")  # a password session: its token is revoked
    expect(page.locator("#login")).to_be_visible()
    assert page.evaluate("sessionStorage.getItem('usher.token')") is None
    assert site.http("GET", "/v1/whoami", token=session).status_code == 401
    check_refusals(site, page, moving)


def test_dashboard_on_a_qemu_guest(tmp_path: Path, tiny_storage: Path, page: Page) -> None:
    """A real guest: its state follows pause and resume, its chart shows what QEMU uses."""
    cluster = Cluster(tmp_path / "qemu", None, storage=tiny_storage, plugin_tables=FAST_SAMPLES)
    try:
        cluster.start_ctrl()
        cluster.start_lnm("node-1", driver="qemu", vcpus=2, memory_mb=2048)
        client = cluster.client()
        cluster.run(client.create_vms(names=["guest"], memory_mb=128), timeout=120)
        vm = client.get_vm("guest")
        page.goto(f"{cluster.url}/ui/")
        page.fill("#login-token", cluster.token)
        page.click("#login-submit")
        expect(row(page, vm).locator("td.state")).to_have_text("running")
        vm_action(page, vm, "pause")
        expect(row(page, vm).locator("td.state")).to_have_text("paused")
        vm_action(page, vm, "resume")
        expect(row(page, vm).locator("td.state")).to_have_text("running")
        page.click(f'#vms tr[data-vm="{vm.id}"] td.clickable')
        expect(page.locator("#charts")).to_have_attribute("data-points", TWO_OR_MORE)
        memory = page.locator("#charts .chart .label span").nth(2)
        expect(memory).not_to_have_text(re.compile(r"no data|: 0\.0 MiB"))
        shot(page, "qemu")
    finally:
        live = [v.id for v in cluster.vms() if v.state in (VMState.RUNNING, VMState.PAUSED)]
        if live:  # guests outlive their LNM by design: end this one
            cluster.client().wait(cluster.client().stop(live, kwargs={"hard": True}), 60)
        cluster.stop()


def test_the_selection_is_what_is_visible_and_confirmations_name_the_vms(
    site: Cluster, page: Page
) -> None:
    admin = site.client()
    site.run(admin.create_vms(names=["sel-a", "sel-b", "other"], vcpus=1, memory_mb=64))
    by_name = {vm.name: vm for vm in site.vms()}
    page.goto(f"{site.url}/ui/")
    page.fill("#login-user", "alice")
    page.fill("#login-password", ALICE_PW)
    page.click("#login-submit")
    expect(page.locator("#page-info")).to_have_text("1-3 of 3")
    for name in ("sel-a", "sel-b"):
        row(page, by_name[name]).locator("input.pick").check()
    expect(page.locator("#selected-count")).to_have_text("2 selected")

    page.fill("#f-search", "other")  # both selected VMs leave the table
    page.click("#f-apply")
    expect(page.locator("#vms tbody tr")).to_have_count(1)
    expect(page.locator("#selected-count")).to_have_text("0 selected")
    page.click('#actions button[data-action="stop"]')
    expect(page.locator("#messages .msg.error", has_text="select VMs first")).to_be_visible()
    assert {vm.name: vm.state for vm in site.vms()}["sel-a"] == "running"  # nothing hit

    page.click("#f-clear")
    expect(page.locator("#page-info")).to_have_text("1-3 of 3")
    row(page, by_name["sel-a"]).locator("input.pick").check()
    page.click('#actions button[data-action="stop"]')  # the toast follows it to its end
    expect(page.locator("#messages .msg", has_text="stop of sel-a: succeeded")).to_be_visible()
    row(page, by_name["sel-a"]).locator("input.pick").uncheck()
    for name in ("sel-a", "sel-b"):
        row(page, by_name[name]).locator("input.pick").check()
    page.click('#actions button[data-action="destroy"]')
    expect(page.locator("#confirm-text")).to_contain_text("Destroy 2 VMs sel-a, sel-b?")
    page.click("#confirm-no")
    assert len(site.vms()) == 3


def log_in_as_alice(site: Cluster, page: Page) -> None:
    page.goto(f"{site.url}/ui/")
    page.fill("#login-user", "alice")
    page.fill("#login-password", ALICE_PW)
    page.click("#login-submit")
    expect(page.locator("#whoami")).to_contain_text("alice")


def test_create_form_vm_detail_view_and_node_actions(site: Cluster, page: Page) -> None:
    log_in_as_alice(site, page)
    page.click("#create summary")
    expect(page.locator("#c-image option")).to_have_count(1)  # the catalogue: blank
    page.fill("#c-names", "web-1, web-2")
    page.fill("#c-vcpus", "2")
    page.fill("#c-memory", "128")
    page.fill("#c-cluster", "web")
    page.fill("#c-tags", "env=prod, web")
    page.click("#c-submit")
    expect(
        page.locator("#messages .msg", has_text="create of web-1, web-2: succeeded")
    ).to_be_visible()
    made = {vm.name: vm for vm in site.vms()}
    assert (made["web-1"].spec.vcpus, made["web-1"].spec.memory_mb) == (2, 128)
    assert made["web-2"].tags == ["env=prod", "web"] and made["web-2"].cluster == "web"
    expect(row(page, made["web-1"]).locator("td.tags")).to_have_text("env=prod, web")
    page.fill("#c-names", "web-1")  # taken: the API's refusal
    page.click("#c-submit")
    expect(page.locator("#messages .msg.error", has_text="already taken: web-1")).to_be_visible()
    page.fill("#f-tag", "web, env=prod")  # VMs with both
    page.click("#f-apply")
    expect(page.locator("#page-info")).to_have_text("1-2 of 2")

    # one VM after another, quickly: the view is the last one's, console included
    row(page, made["web-1"]).locator("td.clickable").click()
    row(page, made["web-2"]).locator("td.clickable").click()
    expect(page.locator("#d-name")).to_have_text("web-2")
    expect(page.locator("#d-console")).to_contain_text("web-2: running")
    expect(page.locator("#d-console")).not_to_contain_text("web-1")

    # the detail view: definition, state history, events, console, usage; rename, tags
    web1 = made["web-1"]
    row(page, web1).locator("td.clickable").click()
    detail = page.locator("#detail-panel")
    expect(detail).to_be_visible()
    expect(page.locator("#d-name")).to_have_text("web-1")
    expect(page.locator('#d-definition dd[data-field="tags"]')).to_have_text("env=prod, web")
    expect(page.locator('#d-definition dd[data-field="memory"]')).to_have_text("128 MiB")
    expect(page.locator("#d-history li").first).to_contain_text("→ running")
    expect(page.locator("#d-events li", has_text="register")).to_have_count(1)
    expect(page.locator("#d-console")).to_contain_text("web-1: running")
    expect(page.locator("#chart-title")).to_contain_text("VM web-1")
    page.fill("#d-new-name", "front-1")
    page.click("#d-rename button")
    expect(page.locator("#d-name")).to_have_text("front-1")
    expect(page.locator(f'#vms tr[data-vm="{web1.id}"]')).to_have_attribute("data-name", "front-1")
    page.fill("#d-new-name", "web-2")  # taken
    page.click("#d-rename button")
    expect(page.locator("#messages .msg.error", has_text="'web-2' is taken")).to_be_visible()
    page.fill("#d-tag-list", "db, team/data")
    page.click("#d-tags button")
    expect(page.locator('#d-definition dd[data-field="tags"]')).to_have_text("db, team/data")
    assert site.client().get_vm(web1.id).tags == ["db", "team/data"]
    page.fill("#f-tag", "")  # (front-1 is not tagged web any more)
    vm_action(page, site.client().get_vm(web1.id), "stop")  # the view follows the VM live
    expect(page.locator('#d-definition dd[data-field="state"]')).to_have_text("stopped")
    expect(page.locator('#d-definition dd[data-field="desired"]')).to_have_text("stopped")
    page.click("#d-close")
    expect(detail).to_be_hidden()

    # node actions: drain and undrain, maintenance (confirmed: it empties the node), activate
    node1 = page.locator('#nodes tr[data-node="node-1"]')
    node1.locator('button[data-node-action="drain"]').click()
    expect(node1.locator("td.state")).to_have_text("draining")
    assert site.client().node("node-1").drained
    node1.locator('button[data-node-action="undrain"]').click()
    expect(node1.locator("td.state")).to_have_text("up")
    node2 = page.locator('#nodes tr[data-node="node-2"]')
    node2.locator('button[data-node-action="maintenance"]').click()
    expect(page.locator("#confirm-text")).to_contain_text("Put in maintenance node node-2?")
    page.click("#confirm-yes")
    expect(
        page.locator("#messages .msg", has_text="maintenance of node node-2: succeeded")
    ).to_be_visible()
    expect(node2.locator("td.state")).to_have_text("maintenance")
    assert all(vm.node == "node-1" for vm in site.vms())
    node2.locator('button[data-node-action="activate"]').click()
    expect(node2.locator("td.state")).to_have_text("up")
    shot(page, "detail-and-nodes")


def test_the_layout_works_at_800_pixels(site: Cluster, page: Page) -> None:
    site.run(
        site.client().create_vms(
            names=["narrow-1"], vcpus=1, memory_mb=64, tags=["a-long-tag=with-a-value"]
        )
    )
    page.set_viewport_size({"width": 800, "height": 900})
    log_in_as_alice(site, page)
    expect(page.locator('#vms tr[data-name="narrow-1"]')).to_be_visible()
    page.locator('#vms tr[data-name="narrow-1"] td.clickable').focus()
    page.keyboard.press("Enter")  # the keyboard opens a VM's details too
    expect(page.locator("#detail-panel")).to_be_visible()
    expect(page.locator("#d-name")).to_have_text("narrow-1")
    page.click("#create summary")
    assert page.evaluate("document.documentElement.scrollWidth") <= 800  # no sideways scroll
    for panel in ("#nodes-panel", "#vms-panel", "#detail-panel", "#events-panel", "#create-panel"):
        box = page.locator(panel).bounding_box()
        assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 800, panel
    shot(page, "narrow")
