"""The one name rule (bench.names) for every name that becomes a file or folder name."""
from __future__ import annotations

import pytest

from bench.data.names import check_case_name
from bench.errors import BenchError
from bench.names import check_name, name_problem, protocol_name_problem

ALLOWED = ["case0001", "nnunet_v2", "nnU-Net 3d fullres", "cpu@batch_size=4,seeds=[0,1]", "swinunet@skip=0",
           "a.b", "x" * 200, "ÉtudeÜ"]
REFUSED = {"": "is empty", "x" * 201: "longer than 200", "../x": "path separator", "a/b": "path separator",
           "a\\b": "path separator", "..": "contains '..'", "a..b": "contains '..'", ".hidden": "starts with '.'",
           ".": "starts with '.'", "a\nb": "unprintable", "tab\there": "unprintable", "nul\x00": "unprintable",
           " lead": "space", "trail ": "space"}


@pytest.mark.parametrize("name", ALLOWED)
def test_names_the_rule_allows(name):
    assert name_problem(name) is None and check_name(name, "--study") == name


@pytest.mark.parametrize("name, problem", REFUSED.items(), ids=[repr(n[:12]) for n in REFUSED])
def test_names_the_rule_refuses_in_one_line_naming_the_source(name, problem):
    assert problem in (name_problem(name) or "")
    for check in (lambda: check_name(name, "--study", "study name"), lambda: check_case_name(name, "list.txt")):
        with pytest.raises(BenchError) as e:
            check()
        assert len(str(e.value).splitlines()) == 1 and problem in str(e.value)


def test_external_is_reserved_for_protocols_in_any_case():
    for name in ("external", "External", "EXTERNAL"):
        assert "reserved" in (protocol_name_problem(name) or "")
        assert name_problem(name) is None  # a study, a case or an external run may be called that
    assert protocol_name_problem("external@iterations=3") is None
    assert protocol_name_problem(".hidden") == "starts with '.'"
