"""Parsers against real captured Android output (see tests/fixtures/android/SOURCES.md)."""
from pathlib import Path

import pytest

from device_tests.parsers import (
    parse_battery,
    parse_cpufreq_khz,
    parse_dumpsys_meminfo,
    parse_getprop,
    parse_governor,
    parse_proc_meminfo,
    parse_proc_status,
    parse_smaps_rollup,
    parse_thermalservice,
)

FIX = Path(__file__).parents[1] / "fixtures" / "android"


def fixture(name: str) -> str:
    return (FIX / name).read_text()


def test_every_fixture_has_a_source():
    sources = fixture("SOURCES.md")
    for path in FIX.glob("*.txt"):
        assert f"`{path.name}`" in sources, path.name


def test_meminfo_app_form():
    m = parse_dumpsys_meminfo(fixture("dumpsys_meminfo_app_mgo.txt"))
    assert (m.pid, m.process, m.is_app) == (5369, "org.ming.mgo", True)
    assert m.columns[:5] == ("Pss Total", "Private Dirty", "Private Clean", "SwapPss Dirty", "Rss Total")
    assert m.rows["Native Heap"]["Heap Alloc"] == 16561
    assert m.rows["Stack"] == {"Pss Total": 480, "Private Dirty": 480, "Private Clean": 0,
                               "SwapPss Dirty": 0, "Rss Total": 488}
    assert (m.total_pss_kb, m.total_rss_kb) == (39321, 124676)
    s = m.summary
    assert s is not None and (s.total_pss_kb, s.total_rss_kb, s.total_swap_pss_kb) == (39321, 124676, 545)
    assert s.pss_kb["Native Heap"] == 12464 and s.rss_kb["Code"] == 88088
    assert s.pss_kb["Private Other"] == 2136 and "Private Other" not in s.rss_kb
    assert s.rss_kb["Unknown"] == 4000 and "Unknown" not in s.pss_kb  # RSS-only row
    # The app summary's PSS parts add up to the total, as Android prints them.
    assert sum(s.pss_kb.values()) == s.total_pss_kb


def test_meminfo_detailed_form():
    m = parse_dumpsys_meminfo(fixture("dumpsys_meminfo_app_launcher3_detailed.txt"))
    assert len(m.columns) == 11 and m.columns[1] == "Pss Clean"
    assert m.rows["EGL mtrack"]["Private Dirty"] == 51348
    assert (m.total_pss_kb, m.total_rss_kb) == (105529, 187052)
    assert m.summary is not None and m.summary.total_swap_pss_kb == 0  # 'TOTAL SWAP (KB):' form
    assert m.summary.pss_kb["Graphics"] == 61692


def test_meminfo_native_process_form_has_no_summary():
    # A native process (our runner) prints the table without Dalvik rows or App Summary; no
    # public capture was found, so the app capture is cut at its table (documented in SOURCES.md).
    text = fixture("dumpsys_meminfo_app_mgo.txt")
    table = text[: text.index(" App Summary")]
    native = "\n".join(ln for ln in table.splitlines() if "Dalvik" not in ln)
    m = parse_dumpsys_meminfo(native)
    assert m.summary is None and not m.is_app
    assert m.total_pss_kb == 39321 and m.rows["Native Heap"]["Pss Total"] == 12523


def test_meminfo_errors():
    with pytest.raises(ValueError, match="No process found"):
        parse_dumpsys_meminfo("No process found for: com.nope\n")
    with pytest.raises(ValueError):
        parse_dumpsys_meminfo("garbage\n")


def test_thermal_aidl_current_not_cached():
    th = parse_thermalservice(fixture("dumpsys_thermalservice_samsung_aidl.txt"))
    assert th.status == 0 and th.status_name == "NONE" and th.hal_ready is True
    # Current values from the HAL win over the stale cache (AP: 34.6 now, 55.0 cached).
    assert th.max_celsius("CPU") == 34.6 and th.max_celsius("SKIN") == 28.2
    assert {t.name for t in th.cached} == {t.name for t in th.temperatures}
    assert th.cooling_devices == [] and not th.throttling


def test_thermal_moderate_throttling():
    th = parse_thermalservice(fixture("dumpsys_thermalservice_hal20_moderate.txt"))
    assert th.status_name == "MODERATE" and th.throttling
    skin = next(t for t in th.temperatures if t.name == "skin")
    assert (skin.celsius, skin.status, skin.type_name) == (44.637, 2, "SKIN")
    assert th.max_celsius("CPU") == 48.2 and len(th.temperatures) == 11
    assert max(c.value for c in th.cooling_devices) == 11


def test_getprop_multiline_and_empty_values():
    p = parse_getprop(fixture("getprop_android14_emulator_excerpt.txt"))
    assert p["persist.sys.boot.reason.history"].splitlines() == [
        "reboot,1732006385", "reboot,factory_reset,1731934106", "reboot,1731933991"]
    assert p["ro.board.platform"] == "" and p["ro.soc.model"] == "ranchu"
    assert (p["ro.build.version.sdk"], p["ro.product.cpu.abi"]) == ("34", "x86_64")
    assert p["persist.sys.dalvik.vm.lib.2"] == "libart.so"
    assert parse_getprop("[a]: [x [y]]\r\n") == {"a": "x [y]"}


def test_smaps_rollup_old_kernel():
    r = parse_smaps_rollup(fixture("smaps_rollup_a52q.txt"))
    assert (r.rss_kb, r.pss_kb, r.swap_kb, r.swap_pss_kb) == (55656, 7071, 35232, 1194)
    assert r.pss_anon_kb is None and r.fields["Anonymous"] == 23876
    with pytest.raises(ValueError):
        parse_smaps_rollup("Name:\tx\n")


def test_proc_meminfo_indented():
    m = parse_proc_meminfo(fixture("proc_meminfo_android10_xcrash.txt"))
    assert (m.mem_total_kb, m.mem_available_kb, m.swap_free_kb) == (3659320, 372516, 12320)
    assert m.fields["Active(anon)"] == 1261180


def test_battery():
    b = parse_battery(fixture("dumpsys_battery.txt"))
    assert (b.level, b.scale, b.percent, b.celsius, b.voltage_mv) == (100, 100, 100.0, 27.4, 4352)
    assert b.usb_powered and not b.ac_powered and b.technology == "Li-ion" and b.status == 5


def test_proc_status_and_smaps_of_this_process():
    # The host kernel prints the same formats Android's kernel does.
    s = parse_proc_status(Path("/proc/self/status").read_text())
    assert s.vm_rss_kb and s.vm_hwm_kb and s.vm_hwm_kb >= s.vm_rss_kb
    assert s.rss_anon_kb + s.rss_file_kb + s.rss_shmem_kb == s.vm_rss_kb
    r = parse_smaps_rollup(Path("/proc/self/smaps_rollup").read_text())
    assert 0 < r.pss_kb <= r.rss_kb


def test_cpufreq_text():
    assert parse_cpufreq_khz("1804800\n") == 1804800
    assert parse_governor("schedutil\n") == "schedutil" and parse_governor("\n") == ""


def test_meminfo_android11_and_older_captures():
    """Two more real captures: Android 11+ with `TOTAL SWAP (KB)` and an RSS-only Unknown summary row;
    a pre-11 table without the Rss column."""
    new = parse_dumpsys_meminfo(fixture("dumpsys_meminfo_app_douyin_swapkb.txt"))
    assert (new.total_pss_kb, new.total_rss_kb, new.pid) == (1144795, 1363052, 24989)
    assert new.summary.total_swap_pss_kb == 0 and new.summary.rss_kb["Unknown"] == 140756
    assert "Unknown" not in new.summary.pss_kb and new.summary.pss_kb["Code"] == 677652
    old = parse_dumpsys_meminfo(fixture("dumpsys_meminfo_app_yvr_no_rss.txt"))
    assert (old.total_pss_kb, old.total_rss_kb) == (253123, None) and "Rss Total" not in old.columns


def test_meminfo_cut_inside_its_total_row_is_refused():
    text = fixture("dumpsys_meminfo_app_douyin_swapkb.txt")
    cut = text[:text.index("TOTAL  1144795") + len("TOTAL  11447")]  # the stream ended mid-number
    with pytest.raises(ValueError, match="TOTAL row has 1 values for 8 columns"):
        parse_dumpsys_meminfo(cut)


def test_thermal_nan_is_no_reading():
    """The HAL reports NaN for a sensor it cannot read ("If not available set by HAL to NAN"): it must not
    hide the others (max() over a list holding NaN can return NaN, and NaN >= limit is false)."""
    ap = "Temperature{mValue=34.6, mType=0, mName=AP, mStatus=0}"
    text = fixture("dumpsys_thermalservice_samsung_aidl.txt")
    hot = text.replace(ap, "Temperature{mValue=NaN, mType=0, mName=CPU0, mStatus=0}\n\t" + ap.replace("34.6", "95.0"))
    assert parse_thermalservice(hot).max_celsius("CPU") == 95.0
    assert parse_thermalservice(text.replace(ap, ap.replace("34.6", "NaN"))).max_celsius("CPU") is None


def test_getprop_pty_line_endings():
    """`adb shell getprop > file` through a pty on Windows: every line ends in \\r\\r\\n."""
    text = fixture("getprop_android14_emulator_excerpt.txt")
    assert parse_getprop(text.replace("\n", "\r\r\n")) == parse_getprop(text)


def test_proc_status_refuses_what_it_cannot_read():
    for bad in ("", "error: device offline\n", "Name:\tx\nState:\tZ (zombie)\n"):
        with pytest.raises(ValueError, match="not a /proc/PID/status"):
            parse_proc_status(bad)
    whole = Path("/proc/self/status").read_text()
    cut = whole[:whole.index("VmRSS:") + len("VmRSS:\t   81")]  # cut mid-number: no kB
    with pytest.raises(ValueError, match="VmRSS has no kB unit"):
        parse_proc_status(cut)


def test_cpufreq_text_errors():
    for bad in ("", "<unknown>\n", "cat: scaling_cur_freq: Device or resource busy\n"):
        with pytest.raises(ValueError, match="not a cpufreq value in kHz"):
            parse_cpufreq_khz(bad)
