"""``kboxnet doctor`` and backend availability when a program is missing."""

from __future__ import annotations

import json

from .helpers import kboxnet


def test_doctor_json_has_core_and_plugin_checks():
    out = kboxnet("doctor", "--json")
    assert out.returncode in (0, 5), out.stderr
    report = json.loads(out.stdout)
    names = {c["name"] for c in report["checks"]}
    assert {"tun device", "network namespaces", "seccomp user notification + ADDFD", "ping sockets"} <= names
    assert "passt" in names  # contributed by kboxnet-passt through the kboxnet_doctor_checks hook
    for check in report["checks"]:
        assert check["ok"] or check["fix"], f"failing check without a fix: {check}"


def test_passt_hidden_from_path_is_unavailable_with_a_hint(tmp_path):
    out = kboxnet("backends", "--json", env={"PATH": str(tmp_path)})
    assert out.returncode == 0, out.stderr
    rows = {r["name"]: r for r in json.loads(out.stdout)}
    passt = rows["passt"]
    assert passt["available"] is False
    assert "passt" in passt["reason"] and passt["hint"]
    assert rows["minislirp"]["available"] is True  # the fallback that always works
    doctor = kboxnet("doctor", "--json", env={"PATH": str(tmp_path)})
    check = {c["name"]: c for c in json.loads(doctor.stdout)["checks"]}["passt"]
    assert not check["ok"] and check["fix"]
