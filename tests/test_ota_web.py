"""The Upgrade page (manual §12) in Debian's Chromium, in the style of test_web_ui.py: it
shows the charger's own progress (GET /api/upgrade: bytes received and written, the
install), the result code of the manual (100 UP, E02 UP, E03 UP, E04 UP for a file for
another model, truncated or with a damaged header), each also on the charger's display,
the restart and the version that runs afterwards, also for an upload it did not start
itself; a second upload while one runs is refused with a clear message. A language pack
that adds a language makes the web app offer it."""

import hashlib
import json
import re
import socket
import time

import pytest
from harness import PASSWORD, ROOT
from test_ota import FACTORY_VERSION, STALL_US, WAIT_S, bad_file, login, mkbin, shown_at, variant
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
    t.field(L["login.pw"]).fill(PASSWORD)
    t.button(L["btn.confirm"])
    t.title(L["up.title"])
    t.page.evaluate(PAGE_LOG)


def choose(t, data, digest=None):
    """The page computes the .bin's MD5 (as Python does) and sends it; a digest given
    goes as typed over it."""
    t.section.locator("#up-file").set_input_files(
        files=[{"name": "EVPLUS.bin", "mimeType": "application/octet-stream", "buffer": data}])
    expect(t.page.locator("#up-sum")).to_have_text("MD5 " + hashlib.md5(data).hexdigest())
    t.field(L["up.md5"]).fill(digest or "")
    t.button(L["btn.continue"])


def throttle(t, bytes_per_s):
    """Chromium's network throttling for the tab's uploads."""
    cdp = t.ctx.new_cdp_session(t.page)
    cdp.send("Network.enable")
    cdp.send("Network.emulateNetworkConditions", {
        "offline": False, "latency": 0, "downloadThroughput": -1,
        "uploadThroughput": bytes_per_s})


def shown_on_display(c, text, since):
    """The display showed `text` after `since` (a t_us of the simulator's clock)."""
    return text in [e["value"] for e in c.events(since) if e["what"] == "display"]


@pytest.fixture(scope="module")
def small_bin(tmp_path_factory):
    return variant(tmp_path_factory.mktemp("web-bins"), "2.0.2")


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

    throttle(t, 1 << 20)
    t.page.evaluate(PAGE_LOG)
    choose(t, data)
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
    assert c.http("POST", "/api/login", json={"password": c.password}).status == 200
    cookie = "; ".join(f"{k}={v}" for k, v in c.cookies.items())
    s = socket.create_connection(("127.0.0.1", c.http_port))
    try:
        t_sent = c.snapshot()["t_us"]  # before the data: the stall begins after it
        s.sendall((f"POST /api/upgrade?md5={hashlib.md5(data).hexdigest()} HTTP/1.1\r\n"
                   f"Host: 127.0.0.1\r\nCookie: {cookie}\r\n"
                   "Content-Type: application/octet-stream\r\n"
                   f"Content-Length: {len(data)}\r\n\r\n").encode() + data[:20000])
        t = tab(f"http://127.0.0.1:{c.http_port}")
        open_upgrade_page(t)
        expect(t.page.locator("#up-progress")).to_have_text(
            re.compile(re.escape(L["up.received"].split("{")[0])))
        got = percents([t.page.locator("#up-progress").text_content()])
        assert got and got[0] == 20000 * 100 // len(data), got
        expect(t.msg).to_have_text(L["up.E03"], timeout=(STALL_US / 1e6 + WAIT_S) * 1000)
        expect(t.page.locator("#up-code")).to_have_text("E03 UP")
        expect(t.page.locator("#up-progress")).to_be_empty()
        # On the display too (for 10 s), not before 15 s without data on the firmware's
        # clock (its ms ticks may end a wait 1 ms early).
        waited = shown_at(c, "E03 UP", t_sent) - t_sent
        assert waited >= STALL_US - 1_000, waited
    finally:
        s.close()
    assert not t.problems, t.problems


@pytest.mark.parametrize("case", ["model", "truncated", "header"])
def test_wrong_file_shows_e04_on_page_and_display(start_charger, tab, small_bin, case):  # noqa: F811
    """A file for another model, one cut short, one whose header was damaged: the page
    shows E04 UP with the manual's text, the display shows E04 UP, nothing is installed.
    One charger each (it boots in a fraction of a second): E04 UP stays on the display
    for 10 s, so a second E04 on a shared one would not show as a change."""
    data = bad_file(small_bin, case)
    c = start_charger()
    t = tab(f"http://127.0.0.1:{c.http_port}")
    open_upgrade_page(t)
    since = c.snapshot()["t_us"]
    choose(t, data)
    expect(t.msg).to_have_text(L["up.E04"], timeout=30_000)
    expect(t.page.locator("#up-code")).to_have_text("E04 UP")
    # The next display refresh shows it, for 10 s: seen in the simulator's event ring,
    # which keeps it however late the page answered.
    c.wait_for(lambda s: shown_on_display(c, "E04 UP", since), timeout=WAIT_S)
    assert c.running and c.http("GET", "/api/status").body["software_version"] == FACTORY_VERSION
    assert not (c.data_dir / "boot.json").exists()
    assert not t.problems, t.problems


def test_second_upload_from_another_tab_is_refused(start_charger, tab, tmp_path, small_bin):  # noqa: F811
    """Two tabs, one upload each: while the first tab's 2 MB file is on its way (512 KB/s),
    the second tab's upload is refused with the reason (another upgrade is in progress)
    and shows the other one's progress until it ends; the first gets its own result
    (E02 UP: its checksum is wrong, so the charger stays as it was)."""
    big = variant(tmp_path, "2.0.3", pad=2 << 20)
    c = start_charger()
    base = f"http://127.0.0.1:{c.http_port}"
    first, second = tab(base), tab(base)
    open_upgrade_page(first)
    open_upgrade_page(second)
    throttle(first, 512 << 10)
    choose(first, big, hashlib.md5(big + b"x").hexdigest())
    assert c.http("POST", "/api/login", json={"password": c.password}).status == 200
    deadline = time.monotonic() + 10
    while c.http("GET", "/api/upgrade").body["busy"] != "upload":
        assert time.monotonic() < deadline, "the first upload never started"
        time.sleep(0.05)
    choose(second, small_bin)
    expect(second.msg).to_have_text(L["up.busy"])
    received = re.compile(re.escape(L["up.received"].split("{")[0]))
    expect(second.page.locator("#up-progress")).to_have_text(received)
    expect(second.page.locator("#up-code")).to_be_empty()
    expect(first.msg).to_have_text(L["up.E02"], timeout=60_000)
    expect(second.page.locator("#up-progress")).to_be_empty()
    expect(second.msg).to_have_text(L["up.busy"])  # its own message stays
    assert c.http("GET", "/api/upgrade").body["last"]["code"] == "E02 UP"
    assert c.http("GET", "/api/status").body["software_version"] == FACTORY_VERSION
    assert not first.problems and not second.problems, (first.problems, second.problems)


def test_language_pack_adds_a_language(start_charger, tab, tmp_path):  # noqa: F811
    """A language pack with a language the charger did not ship (Português): after the
    upload the web app lists it in its language menu, serves its file, and the pages
    show its strings (keys the pack lacks come from English)."""
    src = tmp_path / "lang"
    src.mkdir()
    pt = {"up.title": "Atualização do sistema", "login.title": "Acesso",
          "btn.confirm": "Confirmar"}
    (src / "pt.json").write_text(json.dumps(pt, ensure_ascii=False), "utf-8")
    index = json.loads((ROOT / "firmware/evse/www/lang/index.json").read_text("utf-8"))
    (src / "index.json").write_text(json.dumps(index + [{"code": "pt", "name": "Português"}],
                                               ensure_ascii=False), "utf-8")
    out = tmp_path / "PT.bin"
    mkbin.main(["language", "--lang", "pt", "-o", str(out), "--src", str(src)])
    data = out.read_bytes()
    c = start_charger()
    t = tab(f"http://127.0.0.1:{c.http_port}")
    open_upgrade_page(t)
    choose(t, data)
    expect(t.msg).to_have_text(L["up.100"], timeout=30_000)
    assert c.running  # no restart for a language pack
    got = c.http("GET", "/lang/index.json")
    assert got.status == 200 and {"code": "pt", "name": "Português"} in got.body, got
    got = c.http("GET", "/lang/pt.json")
    assert got.status == 200 and got.body == pt, got
    # the web app, loaded again, offers it, and shows it when chosen
    t.page.reload()
    t.title(L["up.title"])
    menu = t.page.locator("#uilang")
    expect(menu.locator("option[value=pt]")).to_have_text("Português")
    menu.select_option("pt")
    expect(t.section.locator("h1")).to_have_text(pt["up.title"])
    expect(t.page.locator("html")).to_have_attribute("lang", "pt")
    expect(t.section.get_by_role("button", name=L["btn.continue"])).to_be_visible()  # English
    assert not t.problems, t.problems
    # ... and the charger's own language setting takes it, also after a restart
    login(c)
    r = c.http("PUT", "/api/config", json={"language": "pt"})
    assert r.status == 200, r
    c.restart()
    login(c)
    assert c.http("GET", "/api/config").body["language"] == "pt"
