# The OCPP UpdateFirmware installer of the OTA service (evse/ota.py, docs/ota.md),
# imported only while a download runs: the location's check, the download with its
# retries (lib/httpget.py), the verified file kept across a power cut, then the install.
# Each function takes the Ota whose staging area, key and install it uses.
import asyncio
import os

import atomicfile
import log
from evse import otaimage as img
from evse.ota import HEAD_MS, MAX_FILE, STALL_MS, discard

_log = log.get("ota")


async def run(o, url, retries, retry_interval_s, status, kept):
    """Ota.update_from_url: the file downloaded (or the kept one), verified, installed."""
    try:
        check_source(o, url)
    except img.OtaError as e:
        o.result(e.code, e.msg)
        raise ValueError(e.msg)  # before Downloading: DownloadFailed
    while o.busy or o.running()["trial"]:
        await asyncio.sleep(5)  # one upgrade at a time; a new version first proves healthy
    o.busy = "download"
    try:
        info = await resume(o, url) if kept else None
        if info is None:
            o.drop_kept()
            sink = await _fetch(o, url, 1 + max(0, retries), retry_interval_s, status)
            try:
                info = sink.verify()
                info["signature"] = await o.authenticate(sink)
                o.check_floor(info)  # no downgrade over OCPP
            except img.OtaError as e:
                info = e
            else:
                keep(o, url, sink)
            status("Downloaded")
            if isinstance(info, img.OtaError):
                o.result(info.code, info.msg)
                raise ValueError(info.msg)
        o.busy = "waiting"
        while o.charger.session is not None:  # never cut a charge
            await asyncio.sleep(2)
        o.busy = "install"
        status("Installing")
        try:
            await o.install(info, o.kept)
        except img.OtaError as e:
            o.result(e.code, e.msg)
            raise ValueError(e.msg)
        o.result(img.OK, None, version=info["version"], kind=info["kind"],
                 signature=info["signature"])
        return info
    finally:
        discard(o.staging)
        o.drop_kept()
        if o.busy != "reset":
            o.busy = None


def keep(o, url, sink):
    """The verified download becomes the kept file, with what identifies it: the
    location, the length and the MD5 computed while it arrived."""
    os.rename(o.staging, o.kept)
    meta = {"url": url, "bytes": sink.got,
            "md5": sink.md5sum()}
    atomicfile.save_json(o.kept_meta, meta)


async def resume(o, url):
    """The header info of the kept file when it is the whole file downloaded from url
    (same length and MD5 as when it arrived) and passes every check again, the
    signature included, else None (download it again)."""
    try:
        meta = atomicfile.read_json(o.kept_meta)  # this file's own, no older copy
        if meta.get("url") != url:
            raise ValueError("kept file is from %s" % meta.get("url"))
        o.progress[0] = 0
        o.progress[1] = meta.get("bytes") or 0
        sink = img.Sink(None, None, img.MODEL, o.board, defer=True)  # checks only
        buf = img.buffer()
        mv = memoryview(buf)
        with open(o.kept, "rb") as f:
            while True:
                n = f.readinto(buf)
                if not n:
                    break
                sink.write(mv[:n])
                o.progress[0] = sink.got
                await asyncio.sleep_ms(0)
        digest = sink.md5sum()
        if sink.got != meta.get("bytes") or digest != meta.get("md5"):
            raise ValueError("kept file changed: %d bytes, MD5 %s" % (sink.got, digest))
        info = sink.verify()
        info["signature"] = await o.authenticate(sink)
        o.check_floor(info)
    except (OSError, ValueError, AttributeError) as e:  # OtaError is a ValueError
        _log.warning("downloaded file not usable after the restart (%s): downloading again",
                     getattr(e, "msg", None) or repr(e))
        return None
    _log.info("installing %s, downloaded before the restart", info["version"])
    return info


async def _fetch(o, url, tries, retry_interval_s, status):
    """The file in the staging area (a Sink, not yet verified) after at most `tries`
    tries; OSError after the last failed one."""
    for i in range(tries):
        if i:
            # At most a day: OCPP sets no bound, and a sleep past 2**31 ms overflows a 32-bit
            # port's ticks_add (OverflowError: the update would end at its first retry).
            await asyncio.sleep(min(max(1, retry_interval_s), 86400))
        status("Downloading")
        try:
            return await download(o, url)
        except img.OtaError as e:
            if not e.truncated and e.code != img.E_WRITE:  # a refusal: no other try changes it
                o.result(e.code, e.msg)
                raise
            why = e.msg
        except (OSError, ValueError, IndexError, asyncio.TimeoutError) as e:
            why = repr(e)
        _log.warning("download %d/%d of %s failed: %s", i + 1, tries, url, why)
    o.result(img.E_TIMEOUT, "download failed: %s" % why)
    raise OSError(why)


def check_source(o, url):
    """OtaError(E03) for a location this charger must not download from: not a plain
    http(s) URL (httpget.check_url), http:// at security profile 2 or above, and http://
    without a signing key: OCPP 1.6 gives no MD5, so nothing else would stand between
    whoever answers for the host and the firmware."""
    import httpget

    try:
        httpget.check_url(url)
    except ValueError as e:
        raise img.OtaError(img.E_TIMEOUT, "download refused: %s" % e)
    if url.startswith("http://") and o.profile() >= 2:
        raise img.OtaError(img.E_TIMEOUT, "download refused: http:// at security profile %d"
                           % o.profile())
    if url.startswith("http://") and not o.key_installed():
        raise img.OtaError(img.E_TIMEOUT, "download refused: http:// without a signing key "
                           "installed (use https:// or install a key)")


async def download(o, url):
    """One try: the file in o.staging (a Sink, not yet verified). A truncated OtaError when the
    connection ends early, OSError/ValueError/asyncio.TimeoutError when it fails."""
    import httpget

    check_source(o, url)
    secure, host, port, path = httpget.split(url)
    ssl = o.tls() if secure else None
    if secure and ssl is None:  # the same CA store as wss:// (ocpp_ca.pem)
        raise img.OtaError(img.E_TIMEOUT, "download refused: https:// needs the CA certificate")
    if not host:
        raise img.OtaError(img.E_TIMEOUT, "download refused: no host in the location")
    get = httpget.Get(STALL_MS, HEAD_MS, o.download_ms)
    sink = None
    try:
        code, length, early = await get.open(host, port, path, ssl, o.dns_server(),
                                             o.dns_timeout_ms)
        if code != 200:
            raise OSError("HTTP %d" % code)
        if length is not None and length > MAX_FILE:
            raise ValueError("file of %d bytes: at most %d" % (length, MAX_FILE))
        sink = img.Sink(o.staging, None, img.MODEL, o.board, defer=True)
        o.progress[0] = 0
        o.progress[1] = length or 0
        if early:
            sink.write(early)
        mv = memoryview(img.buffer())
        while True:
            n = await get.readinto(mv)
            if not n:
                break
            if sink.got + n > MAX_FILE:
                raise ValueError("file larger than %d bytes" % MAX_FILE)
            sink.write(mv[:n])
            o.progress[0] = sink.got
        sink.finish()
        if length is not None and sink.got != length:
            raise img.OtaError(img.E_FILE, "connection closed at %d of %d bytes"
                               % (sink.got, length), True)
        try:
            sink.verify()  # here only a file shorter than its header says is an error
        except img.OtaError as e:
            if e.truncated:
                raise
            # not for us: said after Downloaded (update_from_url)
        return sink
    finally:
        if sink is not None:
            sink.close()
        await get.close()
