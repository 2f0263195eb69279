"""The Upgrade page (manual §12) in Debian's Chromium, in the style of test_web_ui.py: it
shows the charger's own progress (GET /api/upgrade: bytes received and written, the
install), the result code of the manual (100 UP, E02 UP, E03 UP ...), the restart and
the version that runs afterwards, also for an upload it did not start itself."""

import hashlib
import re
import socket
import time

from test_ota import FACTORY_VERSION, variant
from test_web_ui import browser, expect, strings, tab  # noqa: F401 (fixtures)

L = strings("en")
PAGE_LOG = """() => {
  window.seen = [];
  const p = document.querySelector('#up-progress');
  new MutationObserver(() => window.seen.push(p.textContent)).observe(
      p, {childList: true, characterData: true, subtree: true});
}"""


def open_upgrade_page(t):
    t.go("/#/upgrade")
    t.title(L["login.title"])
    t.field(L["login.pw"]).fill("123456")
    t.button(L["btn.confirm"])
    t.title(L["up.title"])
    t.page.evaluate(PAGE_LOG)


def choose(t, data, digest):
    t.section.locator("#up-file").set_input_files(
        files=[{"name": "EVPLUS.bin", "mimeType": "application/octet-stream", "buffer": data}])
    t.field(L["up.md5"]).fill(digest)
    t.button(L["btn.continue"])


def percents(seen):
    pat = re.escape(L["up.received"]).replace(r"\{pct\}", r"(\d+)")
    pat = pat.replace(r"\{kb\}", r"\d+").replace(r"\{total\}", r"\d+")
    return [int(m.group(1)) for s in seen if (m := re.fullmatch(pat, s))]


def test_upload_progress_result_restart_and_new_version(start_charger, tab, tmp_path):  # noqa: F811
    """A 2 MB .bin sent at about 1 MB/s (Chromium's network throttling): the page shows
    the share the charger has received rising, 100 UP, the restart, then the version
    that runs after it. A wrong checksum first: E02 UP, and nothing changes."""
    data = variant(tmp_path, "2.0.0", pad=2 << 20)
    c = start_charger()
    t = tab(f"http://127.0.0.1:{c.http_port}")
    open_upgrade_page(t)
    expect(t.page.locator("#up-running")).to_have_text(L["up.version"].format(v=FACTORY_VERSION))
    choose(t, data, hashlib.md5(data + b"x").hexdigest())
    expect(t.msg).to_have_text(L["up.E02"], timeout=60_000)
    expect(t.page.locator("#up-code")).to_have_text("E02 UP")

    cdp = t.ctx.new_cdp_session(t.page)
    cdp.send("Network.enable")
    cdp.send("Network.emulateNetworkConditions", {
        "offline": False, "latency": 0, "downloadThroughput": -1, "uploadThroughput": 1 << 20})
    t.page.evaluate(PAGE_LOG)
    choose(t, data, hashlib.md5(data).hexdigest())
    expect(t.msg).to_have_text(L["up.100"], timeout=60_000)
    expect(t.page.locator("#up-code")).to_have_text("100 UP")
    got = percents(t.page.evaluate("window.seen"))
    assert len(set(got)) >= 2 and got == sorted(got) and got[0] < 100, got
    # the charger resets itself; the page notices it has gone, then it is powered back
    assert c.wait_exit(timeout=20) == 3
    expect(t.page.locator("#up-progress")).to_have_text(L["up.restarting"], timeout=10_000)
    c.start()
    expect(t.msg).to_have_text(L["up.restarted"].format(v="2.0.0"), timeout=30_000)
    assert c.http("GET", "/api/status").body["software_version"] == "2.0.0"
    assert not t.problems, t.problems


def test_page_follows_an_upload_it_did_not_start_to_e03(start_charger, tab, tmp_path):  # noqa: F811
    """An upload from elsewhere that stalls: the page, opened meanwhile, shows how much
    the charger has received, then E03 UP when it gives up after 15 s without data (the
    code the sender itself can never read)."""
    data = variant(tmp_path, "2.0.1")
    c = start_charger()
    assert c.http("POST", "/api/login", json={"password": "123456"}).status == 200
    cookie = "; ".join(f"{k}={v}" for k, v in c.cookies.items())
    s = socket.create_connection(("127.0.0.1", c.http_port))
    try:
        s.sendall((f"POST /api/upgrade?md5={hashlib.md5(data).hexdigest()} HTTP/1.1\r\n"
                   f"Host: x\r\nCookie: {cookie}\r\nContent-Type: application/octet-stream\r\n"
                   f"Content-Length: {len(data)}\r\n\r\n").encode() + data[:20000])
        t0 = time.monotonic()
        t = tab(f"http://127.0.0.1:{c.http_port}")
        open_upgrade_page(t)
        expect(t.page.locator("#up-progress")).to_have_text(
            re.compile(re.escape(L["up.received"].split("{")[0])))
        got = percents([t.page.locator("#up-progress").text_content()])
        assert got and got[0] == 20000 * 100 // len(data), got
        expect(t.msg).to_have_text(L["up.E03"], timeout=25_000)
        assert time.monotonic() - t0 >= 14
        expect(t.page.locator("#up-code")).to_have_text("E03 UP")
        expect(t.page.locator("#up-progress")).to_be_empty()
    finally:
        s.close()
    assert not t.problems, t.problems

