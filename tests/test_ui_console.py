"""The dashboard's attached console: xterm.js in a real headless Chromium, typing into a fake
guest's shell over the WebSocket, and nothing fetched from anywhere but the controller."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from playwright.sync_api import Page, expect

from harness import Cluster, wait_for
from test_ui_browser import browser, db_kind, log_in_as_alice, page, row, shot, site

__all__ = ["browser", "db_kind", "page", "site"]  # the fixtures, shared with the dashboard tests

pytestmark = pytest.mark.timeout(240)


@pytest.fixture
def watched(page: Page) -> Iterator[tuple[Page, list[str], list[str]]]:
    """The page, with every URL it asks for and every message of its browser console."""
    asked: list[str] = []
    said: list[str] = []
    page.on("request", lambda request: asked.append(request.url))
    page.on("websocket", lambda ws: asked.append(ws.url))
    page.on("console", lambda message: said.append(f"{message.type}: {message.text}"))
    yield page, asked, said


def test_typing_into_the_attached_console(
    site: Cluster, watched: tuple[Page, list[str], list[str]]
) -> None:
    page, asked, said = watched
    site.run(site.client().create_vms(names=["shell-1"]))
    vm = site.client().get_vm("shell-1")
    log_in_as_alice(site, page)
    row(page, vm).locator("td.clickable").click()
    expect(page.locator("#d-console")).to_contain_text("shell-1: running")

    page.click("#d-console-attach")
    terminal = page.locator("#d-terminal")
    expect(terminal).to_have_attribute("data-state", "attached")
    expect(page.locator("#d-console")).to_be_hidden()
    expect(terminal.locator(".xterm-rows")).to_contain_text("shell-1: running")  # the history
    page.locator("#d-terminal .xterm").click()
    page.keyboard.type("echo typed-in-a-browser")
    page.keyboard.press("Enter")
    lines = terminal.locator(".xterm-rows > div")
    expect(lines.filter(has_text=re.compile(r"^typed-in-a-browser\s*$"))).to_have_count(1)
    expect(lines.filter(has_text="echo typed-in-a-browser")).to_have_count(1)
    page.keyboard.type("hostname")
    page.keyboard.press("Enter")
    expect(lines.filter(has_text=re.compile(r"^shell-1\s*$"))).to_have_count(1)
    shot(page, "console-attached")

    page.click("#d-console-attach")  # detach: the read-only console is back, with the answers
    expect(terminal).to_be_hidden()
    expect(page.locator("#d-console")).to_contain_text("typed-in-a-browser")
    ended = site.client().events(name="console_detach", vm=vm.id).items
    assert ended and ended[-1].principal == "alice"
    assert ended[-1].data["bytes_typed"] == len("echo typed-in-a-browser\rhostname\r")

    # everything came from the controller; the styles xterm.js makes passed the policy
    assert all(url.split("//", 1)[1].startswith(site.listen) for url in asked), asked
    assert any(url.endswith("/ui/xterm.js") for url in asked)
    assert not [m for m in said if "Content Security Policy" in m], said


def test_a_vm_destroyed_while_attached_closes_its_console(
    site: Cluster, watched: tuple[Page, list[str], list[str]]
) -> None:
    page, _, _ = watched
    site.run(site.client().create_vms(names=["doomed"]))
    vm = site.client().get_vm("doomed")
    log_in_as_alice(site, page)
    row(page, vm).locator("td.clickable").click()
    page.click("#d-console-attach")
    terminal = page.locator("#d-terminal")
    expect(terminal).to_have_attribute("data-state", "attached")
    site.run(site.client().destroy([vm.id]))
    # the view closes with its VM, the session ends (whichever of them noticed first)
    expect(page.locator("#detail-panel")).to_be_hidden()
    expect(terminal).to_be_hidden()
    ended = wait_for(
        "the session's end", lambda: site.client().events(name="console_detach", vm=vm.id).items
    )
    assert len(ended) == 1 and ended[0].data["code"] in (1000, 4404)
