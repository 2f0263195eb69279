# The firmware update a central system asked for with UpdateFirmware (docs/ota.md), the
# one owner of its stored state: ocpp_state.json keeps it under "fw" in the form every
# earlier version wrote, so a charger upgraded in the middle of one goes on with it:
#   {"loc": location, "date": retrieveDate (isotime seconds), "retries": n,
#    "interval": s, "st": the last FirmwareStatusNotification ("Pending" before the
#    first), "ver": the version that took the request, "kept": true once a verified
#    file waits to be installed (evse/ota.py keeps it across a power cut)}
# created (Pending) -> due -> Downloading -> Downloaded (kept) -> Installing -> done
# (Installed, failed) or dropped. Imported only while a request exists.
from evse.ocpp import isotime


def create(svc, p, ver):
    """Stores the request of UpdateFirmware payload p, taken by version ver: Pending."""
    svc.state["fw"] = {
        "loc": p["location"],
        "date": isotime.parse(p["retrieveDate"]),
        "retries": p.get("retries", 0),
        "interval": p.get("retryInterval", 60),
        "st": "Pending",
        "ver": ver,
    }
    svc.save_state()


class FwUpdate:
    """The stored request (svc.state["fw"]) and its transitions; built for a use."""

    def __init__(self, svc, d):
        self._svc = svc
        self._d = d

    def hook_args(self):
        """(location, retrieveDate, retries, retryInterval, kept) for the installer."""
        d = self._d
        return d["loc"], isotime.fmt(d["date"]), d["retries"], d["interval"], bool(d.get("kept"))

    def due(self, now):
        """Pending and its retrieveDate reached: the download may start."""
        return self._d.get("st") == "Pending" and self._d["date"] <= now

    def status(self, status):
        """A FirmwareStatusNotification was sent: stored, so a restart knows where it was."""
        self._d["st"] = status
        self._svc.save_state()

    def resume_kept(self):
        """At boot: True when the power was cut while the verified file waited for the
        charge to end; the request goes on from the kept file (Pending, kept), its
        Downloaded already said."""
        d = self._d
        st = d.get("st")
        if st == "Downloaded" or (st == "Pending" and d.get("kept")):
            d["st"] = "Pending"
            d["kept"] = True
            self._svc.save_state()
            return True
        return False

    def cut_outcome(self, running_version, on_trial):
        """At boot, after a cut while downloading or installing: the status that says how
        it ended, the request dropped; None while it goes on (Pending, or a new version
        on trial that reports Installed once it proves healthy)."""
        d = self._d
        st = d.get("st")
        if st is None or st == "Pending":
            return None
        if st == "Installing":
            if d.get("ver") == running_version:
                st = "InstallationFailed"
            elif on_trial():
                return None
            else:
                st = "Installed"
        else:
            st = "DownloadFailed"
        self.drop()
        return st

    def installed(self, running_version):
        """The running version proved healthy: True (the request dropped) when it is the
        one this request installed."""
        d = self._d
        if d.get("st") == "Installing" and d.get("ver") != running_version:
            self.drop()
            return True
        return False

    def drop(self):
        """The request is over (done, failed or never to be finished)."""
        self._svc.state.pop("fw", None)
        self._svc.save_state()
