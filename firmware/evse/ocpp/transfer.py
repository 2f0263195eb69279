# File transfers asked by the central system (OCPP 1.6 FirmwareManagement profile),
# imported only when one is due.
#
# GetDiagnostics: the fault reports and charge records (optionally those between
# startTime and stopTime) as JSON lines in a file in the data directory, uploaded with
# an HTTP(S) POST to `location` + "/" + file name; DiagnosticsStatusNotification
# Uploading, then Uploaded or UploadFailed after `retries` more tries.
#
# UpdateFirmware: the request is persisted by the handler; at retrieveDate this hands it
# to the installer registered as service.on_update_firmware(location, retrieve_date,
# retries, retry_interval, kept) — an async function that reports its progress through
# service.firmware_status(status) (Downloading, Downloaded, Installing, …) and raises
# OSError/ValueError when it fails. kept: Downloaded was said before a power cut; the
# installer goes on with the file it kept (or downloads it again when that is gone).
# With no installer registered the charger cannot fetch anything: it says DownloadFailed.
import asyncio
import os

import log
import wsclient
from evse.ocpp import isotime

_log = log.get("ocpp.files")

_TIMEOUT_MS = 60000  # one whole upload
_CHUNK = 512


def diag_name(svc):
    return "diag-%s-%s.jsonl" % (svc.hw.serial, isotime.fmt(svc.now()).replace(":", ""))


def _window(rec, lo, hi):
    t = rec.get("t") or rec.get("start")
    if not t or (lo is None and hi is None):
        return True
    try:
        v = isotime.parse(t)
    except ValueError:
        return True
    return (lo is None or v >= lo) and (hi is None or v <= hi)


async def _write_file(svc, path, p):
    # One record in memory at a time: the logs hold up to 200 of each kind. The loop gets
    # a turn after each record, so the pilot and protection tasks never wait for the
    # whole file (several hundred JSON encodes and flash writes).
    lo = isotime.parse(p["startTime"]) if "startTime" in p else None
    hi = isotime.parse(p["stopTime"]) if "stopTime" in p else None
    import json

    h = svc.history
    n = 0
    with open(path, "w") as f:
        f.write(json.dumps({"serial": svc.hw.serial, "generated": isotime.fmt(svc.now())}))
        f.write("\n")
        for kind, log_ in (("fault", h.faults), ("session", h.sessions)):
            for seq, raw in log_.records(False):
                try:
                    rec = json.loads(raw)
                except ValueError:
                    continue
                if isinstance(rec, dict) and _window(rec, lo, hi):
                    rec["kind"] = kind
                    rec["no"] = seq
                    f.write(json.dumps(rec))
                    f.write("\n")
                    n += 1
                await asyncio.sleep_ms(0)
    return n


async def upload_diagnostics(svc, p, name):
    path = svc.data_dir + "/diag.tmp"
    ok = False
    try:
        n = await _write_file(svc, path, p)
        _log.info("diagnostics: %d records in %s", n, name)
        svc.diagnostics_status("Uploading")
        tries = 1 + max(0, p.get("retries", 0))
        for i in range(tries):
            try:
                await asyncio.wait_for_ms(_post(svc, p["location"], name, path), _TIMEOUT_MS)
                ok = True
                break
            except (OSError, ValueError, wsclient.WsError, asyncio.TimeoutError) as e:
                _log.warning("diagnostics upload %d/%d failed: %r", i + 1, tries, e)
            if i + 1 < tries:
                # At most a day (a longer sleep overflows a 32-bit port's ticks).
                await asyncio.sleep(min(max(1, p.get("retryInterval", 30)), 86400))
    except (OSError, ValueError) as e:
        _log.error("diagnostics not written: %r", e)
    finally:
        try:
            os.remove(path)
        except OSError:
            pass
    svc.diagnostics_status("Uploaded" if ok else "UploadFailed")


def _split(url, profile=0):
    # The download locations' rule (http(s):// only, no control or non-ASCII byte): a
    # ValueError.
    import httpget

    secure, host, port, path = httpget.split(url)
    if profile >= 2 and not secure:
        raise ValueError("security profile %d uploads only to https://" % profile)
    return secure, host, port, path


async def _post(svc, location, name, path):
    # The records hold card UIDs: at profile 2 they leave only over verified TLS.
    secure, host, port, base = _split(location, svc.cfg["SecurityProfile"])
    ctx = svc.tls() if secure else None
    if secure and ctx is None:
        raise ValueError("https:// needs the CA certificate")
    size = os.stat(path)[6]
    # asyncio.open_connection calls socket.getaddrinfo, which blocks the whole loop
    # (pilot and protection included) on a name: it only ever gets the address; the name
    # stays in the Host header and the TLS server name.
    import dnsclient  # only while in use (the service forgets it after a connection)

    addr = await dnsclient.address(host, svc.dns_server(), svc.dns_timeout_ms)
    r, w = await asyncio.open_connection(addr, port, ssl=ctx, server_hostname=host)
    try:
        target = base.rstrip("/") + "/" + name
        head = (
            "POST %s HTTP/1.1\r\nHost: %s:%d\r\nContent-Type: application/x-ndjson\r\n"
            "Content-Length: %d\r\nContent-Disposition: attachment; filename=\"%s\"\r\n"
            "Connection: close\r\n\r\n" % (target, host, port, size, name)
        )
        w.write(head.encode())
        await w.drain()
        buf = bytearray(_CHUNK)
        mv = memoryview(buf)
        with open(path, "rb") as f:
            while True:
                n = f.readinto(buf)
                if not n:
                    break
                w.write(mv[:n])
                await w.drain()
        buf = mv = None  # the head reader's line buffer takes its place
        import httpget

        code = (await httpget.read_head(r, _TIMEOUT_MS))[0]  # OSError: not an HTTP answer
        if not 200 <= code < 300:
            raise OSError("upload answered %d" % code)
    finally:
        await w.wait_closed()


async def update_firmware(svc):
    fw = svc.fw_update()
    if fw is None:
        return
    args = fw.hook_args()
    hook = svc.on_update_firmware
    if hook is None:
        _log.error("UpdateFirmware %s: no firmware installer on this build", args[0])
        svc.firmware_status("DownloadFailed")
        fw.drop()
        return
    try:
        await hook(*args)
    except (OSError, ValueError) as e:
        _log.error("firmware update failed: %r", e)
        late = svc.fw_status in ("Downloaded", "Installing")
        svc.firmware_status("InstallationFailed" if late else "DownloadFailed")
    if svc.fw_status != "Installing":  # Installing: the installer reboots, boot reports
        fw.drop()
