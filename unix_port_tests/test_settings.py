# Settings: validation with field-level errors, atomic save, partial files completed with
# defaults, and corrupt files falling back to the backup or the defaults (never a crash).
import os

import atomicfile
from check import eq, true
from evse import settings as st

_DIR = "/tmp/evse_settings_test"


def _fresh():
    try:
        os.mkdir(_DIR)
    except OSError:
        pass
    for n in os.listdir(_DIR):
        os.remove(_DIR + "/" + n)
    return _DIR + "/settings.json"


def test_defaults_follow_the_manual():
    d = st.defaults()
    eq(d["auth_mode"], "rfid")
    eq(d["max_current_a"], 32)
    eq(d["language"], "en")


def test_validation_names_each_bad_field():
    errs = st.validate({"max_current_a": 40, "rfid_type": "X", "ventilation": 1, "nope": 1})
    eq(sorted(errs), ["max_current_a", "nope", "rfid_type", "ventilation"])
    eq(st.validate({"max_current_a": 6, "language": "de"}), {})
    true("max_current_a" in st.validate({"max_current_a": True}), "bool is not a number")
    true("max_current_a" in st.validate({"max_current_a": 16.5}), "whole amps")


def test_min_start_current():
    eq(st.defaults()["min_start_a"], 6, "6 A: what every car must accept")
    eq(st.validate({"min_start_a": 8}), {})
    for bad in (5, 17, 8.5, True, "8", None, -1):
        true("min_start_a" in st.validate({"min_start_a": bad}), "refused: %r" % (bad,))


def test_a_whole_number_written_with_a_point_is_a_whole_number():
    """32.0 (a human's file, a JSON library, the web app) is 32: accepted in the file and
    through apply() (PUT /api/config), and stored as the integer."""
    eq(st.validate({"max_current_a": 32.0, "max_house_current_a": 25.0, "can_addr": 2.0}), {})
    for bad in (16.5, 1e999, -1e999, float("nan"), 5.0, 33.0):
        true("max_current_a" in st.validate({"max_current_a": bad}), "refused: %r" % bad)
    path = _fresh()
    with open(path, "w") as f:
        f.write('{"max_house_current_a": 32.0, "max_current_a": 16.0}')
    s = st.Settings(path)
    s.load()
    eq((s["max_house_current_a"], s["max_current_a"]), (32, 16), "from the file")
    true(type(s["max_house_current_a"]) is int, "stored as an integer")
    eq(s.apply({"max_current_a": 20.0, "cable_max_a": 13.0}), {}, "through the API")
    true(type(s["max_current_a"]) is int and type(s["cable_max_a"]) is int, "integers")
    s2 = st.Settings(path)
    s2.load()
    eq((s2["max_current_a"], s2["cable_max_a"]), (20, 13), "loads back")


def test_ocpp_url_rules():
    good = ("", "ws://10.0.0.5:80/ocpp/CP01", "wss://cs.example.com:443/a/b/CP-7",
            "ws://localhost:9000/CP1")
    bad = ("http://x:80/a", "ws://host/CP1", "ws://host:99999/CP1", "ws://host:80/",
           "ws://ho st:80/CP1", "ws://host:80/a/<b>", 5)
    for u in good:
        eq(st.check_ocpp_url(u), None, u)
    for u in bad:
        true(st.check_ocpp_url(u), "refused: %r" % (u,))


def test_apply_is_all_or_nothing_and_persists():
    path = _fresh()
    s = st.Settings(path)
    s.load()
    seen = []
    s.on_change(seen.append)
    errs = s.apply({"max_current_a": 16, "cp_type": "2V"})
    eq(list(errs), ["cp_type"])
    eq(s["max_current_a"], 32, "nothing changed on error")
    eq(s.apply({"max_current_a": 16}), {})
    eq(seen, [["max_current_a"]])
    s2 = st.Settings(path)
    s2.load()
    eq(s2["max_current_a"], 16)


def test_partial_human_file_is_completed_with_defaults():
    path = _fresh()
    with open(path, "w") as f:
        f.write('{"auth_mode": "free", "max_current_a": 16}')
    s = st.Settings(path)
    s.load()
    eq(s["auth_mode"], "free")
    eq(s["max_current_a"], 16)
    eq(s["charging_mode"], "B")
    eq(s["max_house_current_a"], 0, "a key the file does not name: its default (not set)")
    eq(s.invalid, {}, "nothing to report")


def test_an_invalid_limit_takes_its_safe_value_and_is_reported():
    """A value that cannot be used never falls back to a more permissive one: a current
    limit takes its minimum, a protection its strictest setting, and every refused value
    is a configuration error until that setting is saved again."""
    path = _fresh()
    with open(path, "w") as f:
        f.write('{"max_house_current_a": "32 A", "max_current_a": 99, "cable_max_a": -1,'
                ' "ventilation": "yes", "power_system": "it", "charging_mode": null,'
                ' "language": "xx", "auth_mode": "free"}')
    s = st.Settings(path)
    s.load()
    want = {"max_house_current_a": 6, "max_current_a": 6, "cable_max_a": 6,
            "ventilation": False, "power_system": "TN_TT", "charging_mode": "B"}
    for key, safe in want.items():
        eq(s[key], safe, key)
    eq(s["language"], "en", "not a limit: its default")
    eq(s["auth_mode"], "free", "a good value is kept")
    eq(sorted(s.invalid), sorted(list(want) + ["language"]), "every refused value reported")
    true("6" in s.invalid["max_house_current_a"], "the value in use is named")

    # Saving another setting keeps the bad values on flash: still reported after a restart
    eq(s.apply({"auth_mode": "rfid"}), {})
    s2 = st.Settings(path)
    s2.load()
    eq(sorted(s2.invalid), sorted(s.invalid), "still reported after a restart")
    eq(s2["max_house_current_a"], 6, "still the safe value")
    # Saving the setting itself clears its error, here and after a restart.
    eq(s2.apply({"max_house_current_a": 32}), {})
    true("max_house_current_a" not in s2.invalid, "cleared by saving it")
    s3 = st.Settings(path)
    s3.load()
    eq((s3["max_house_current_a"], "max_house_current_a" in s3.invalid), (32, False), "saved")
    true("max_current_a" in s3.invalid, "the others still reported")


def test_corrupt_file_falls_back_to_backup_then_defaults():
    path = _fresh()
    s = st.Settings(path)
    s.load()
    s.apply({"max_current_a": 20, "language": "de"})
    s.apply({"max_current_a": 24})  # the 20 A version is now the .bak
    with open(path, "w") as f:
        f.write('{"max_current_a": 2')  # half-written
    s2 = st.Settings(path)
    s2.load()
    eq(s2["language"], "de", "the rest from the backup")
    eq(s2["max_current_a"], 6, "the older copy's limit is not used: the safe value")
    true("max_current_a" in s2.invalid, "reported")
    for n in os.listdir(_DIR):
        with open(_DIR + "/" + n, "wb") as f:
            f.write(b"\xff\x00garbage")
    s3 = st.Settings(path)
    s3.load()
    # No copy can be read: the limits take their safe values, never the defaults (a
    # 32 A charger and a 40 A house limit), and the error is reported.
    eq((s3["max_current_a"], s3["max_house_current_a"]), (6, 6), "safe values")
    eq(s3["language"], "en", "defaults for the rest")
    true("max_current_a" in s3.invalid, "reported")
    eq(s3.apply({"language": "de"}), {})
    s4 = st.Settings(path)
    s4.load()
    eq((s4["max_current_a"], "max_current_a" in s4.invalid), (6, True),
       "still safe and reported after a restart")
    fresh = _fresh()  # no file at all: a new charger, the defaults and no error
    s5 = st.Settings(fresh)
    s5.load()
    eq((s5["max_current_a"], s5.invalid), (32, {}), "first boot")


def test_a_corrupt_settings_file_does_not_fall_back_silently_to_an_older_permissive_copy():
    """The installer lowers max_current_a from 32 to 10 A; the file is then corrupted on
    flash. The .bak holds the older 32 A: its limits are not used (SAFE, an error) until
    saved again, a restart or saving another setting does not lift that."""
    path = _fresh()
    s = st.Settings(path)
    s.load()
    eq(s.apply({"max_current_a": 32, "wifi_ssid": "HOME"}), {})
    eq(s.apply({"max_current_a": 10}), {})
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[:-5])  # torn
    s2 = st.Settings(path)
    s2.load()
    eq(s2["wifi_ssid"], "HOME", "the other settings from the older copy")
    for key, value in st.SAFE:
        eq(s2[key], value, "%s at its safe value" % key)
        true(key in s2.invalid, "%s reported" % key)
    eq(s2.apply({"wifi_ssid": "WORK"}), {})
    s3 = st.Settings(path)
    s3.load()
    eq((s3["max_current_a"], "max_current_a" in s3.invalid), (6, True),
       "still safe and reported after saving another setting and a restart")
    eq(s3.apply({"max_current_a": 10}), {})
    eq((s3["max_current_a"], "max_current_a" in s3.invalid), (10, False), "saved: cleared")


def test_a_cut_during_a_settings_save_does_not_take_the_older_permissive_copy():
    """A cut after step 3 of write_atomic: settings.json missing, .bak the old 32 A, .tmp
    the whole new 10 A (its CRC proves it): the newer copy is used, without an error.
    A .tmp that cannot be proven whole leaves the .bak, with its limits at SAFE."""
    path = _fresh()
    s = st.Settings(path)
    s.load()
    eq(s.apply({"max_current_a": 32}), {})
    new = dict(s._values)
    new["max_current_a"] = 10
    with open(path + ".tmp", "wb") as f:  # step 1 of the save of 10 A
        f.write(atomicfile.encode_json(new))
    os.rename(path, path + ".bak")  # step 3, then the power goes
    s2 = st.Settings(path)
    s2.load()
    eq((s2["max_current_a"], s2.invalid), (10, {}), "the newer, whole copy")
    with open(path + ".tmp", "wb") as f:
        f.write(atomicfile.encode_json(new)[:-3])  # torn: the CRC fails
    s3 = st.Settings(path)
    s3.load()
    eq((s3["max_current_a"], "max_current_a" in s3.invalid), (6, True), "the .bak, safe")
    eq(s3.apply({"max_current_a": 12}), {})
    s4 = st.Settings(path)
    s4.load()
    eq((s4["max_current_a"], "max_current_a" in s4.invalid), (12, False), "saved again")
    true("max_house_current_a" in s4.invalid, "the limits not saved stay reported")


def test_it_power_system_only_on_a_single_phase_model():
    """Manual §6.7: IT for single-phase models only. The 22 kW model refuses it with a
    field error on the setting the change names, and a file with both runs TN/TT."""
    path = _fresh()
    s = st.Settings(path)
    s.load()
    eq(s["charger_power"], "22kW")
    errs = s.apply({"power_system": "IT"})
    true("single-phase" in errs.get("power_system", ""), errs)
    eq(s["power_system"], "TN_TT", "nothing changed")
    errs = s.apply({"power_system": "IT", "charger_power": "22kW", "max_current_a": 16})
    eq(sorted(errs), ["power_system"])
    eq(s["max_current_a"], 32, "all or nothing")
    eq(s.apply({"power_system": "IT", "charger_power": "7kW"}), {}, "7 kW: accepted")
    errs = s.apply({"charger_power": "22kW"})
    eq(sorted(errs), ["charger_power"], "then the model cannot become three-phase")
    eq(s["charger_power"], "7kW")
    with open(path, "w") as f:
        f.write('{"power_system": "IT", "charger_power": "22kW"}')
    s2 = st.Settings(path)
    s2.load()
    eq(s2["power_system"], "TN_TT", "the neutral-earth check stays on")
    true("single-phase" in s2.invalid["power_system"], s2.invalid)
    eq(s2.apply({"power_system": "TN_TT"}), {})
    eq(s2.invalid, {}, "saved again: no longer reported")


def test_secrets_are_never_in_the_public_view():
    path = _fresh()
    s = st.Settings(path)
    s.load()
    s.apply({"wifi_password": "secret123"})
    pub = s.public()
    true("wifi_password" not in pub)
    eq(pub["wifi_password_set"], True)


def test_language_packs_add_their_codes():
    """Manual §13: a language pack may add a language; the setting then accepts it."""
    d = "/tmp/evse_settings_lang"
    for p in (d, d + "/www", d + "/www/lang"):
        try:
            os.mkdir(p)
        except OSError:
            pass
    for name in ("pt.json", "nl.json.gz", "index.json", "x.json", "Bad.json", "sv.txt"):
        with open(d + "/www/lang/" + name, "w") as f:
            f.write("{}")
    true("language" in st.validate({"language": "pt"}), "no pack yet: refused")
    st.add_languages(d + "/nowhere")  # no pack directory: nothing changes
    st.add_languages(d)
    st.add_languages(d)  # twice: each code once
    eq(st.validate({"language": "pt"}), {}, "pt from its pack")
    eq(st.validate({"language": "nl"}), {}, "nl from its gzipped pack")
    for bad in ("index", "x", "Bad", "sv", 5, None):
        true("language" in st.validate({"language": bad}), "refused: %r" % (bad,))
    eq(st.LANGS.count("pt"), 1)
    for code in ("pt", "nl"):
        st.LANGS.remove(code)  # other tests see the shipped set
    for name in os.listdir(d + "/www/lang"):
        os.remove(d + "/www/lang/" + name)


def test_the_schema_rows_are_found_by_key():
    """SCHEMA and SAFE are tuples of rows (in flash on a board); spec(), keys() and safe()
    find them, and nothing else: an unknown key is None."""
    keys = st.keys()
    eq(len(keys), len(st.SCHEMA), "one key per row")
    eq(len(set(keys)), len(keys), "no key twice")
    defaults = st.defaults()
    eq(sorted(defaults), sorted(keys), "a default for every key")
    for row in st.SCHEMA:
        eq(st.spec(row[0]), row, "row of %s" % row[0])
        eq(defaults[row[0]], row[1], "default of %s" % row[0])
        eq(st.check(row[2], row[1]), None, "the default of %s passes its check" % row[0])
    for key, value in st.SAFE:
        true(st.spec(key) is not None, "safe value of a setting: %s" % key)
        eq(st.safe(key), value, "safe value of %s" % key)
        eq(st.check(st.spec(key)[2], value), None, "the safe value of %s passes its check" % key)
    eq(len(set(row[0] for row in st.SAFE)), len(st.SAFE), "no safe key twice")
    for key in ("nope", "", "MAX_CURRENT_A", None, 5):
        eq(st.spec(key), None, "unknown key %r" % (key,))
        eq(st.safe(key), None, "no safe value for %r" % (key,))
    eq(st.safe("wifi_ssid"), None, "a setting without a safe value")
    eq(st.validate({"nope": 1}), {"nope": "unknown setting"})


def test_the_meter_models_written_out_are_the_maps_and_the_setting_choices():
    eq(st.METER_MODELS, ("auto", "none") + st.METER_MAPS, "METER_MODELS")
    eq(st.spec("meter_model")[2], ("c",) + st.METER_MODELS, "meter_model's check")
