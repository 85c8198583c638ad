"""``flows/`` is what the controller really programs: regenerate and compare.

Every scenario of ``tests.integration.flowdump_regen`` is built again on a
real bridge (its own namespace, OVS and controller process) into a temporary
directory and compared with the committed ``flows/<scenario>.txt``. A pipeline
change that alters any flow or group fails here with the diff; when the change
is intended, ``make flows`` rewrites the files and the diff is reviewed with
the code.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.integration import flowdump_regen

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def test_flows_match_the_committed_files(tmp_path: Path) -> None:
    scenarios = list(flowdump_regen.SCENARIOS)
    flowdump_regen.generate_all(scenarios, tmp_path)
    diff = flowdump_regen.compare(flowdump_regen.DEFAULT_OUT, tmp_path, scenarios)
    assert not diff, (
        f"{flowdump_regen.DEFAULT_OUT} differs from what the bridges hold now: "
        f"run `make flows` and review the diff\n{diff}"
    )
