"""Options out of any sensible range are refused before work starts, and `fail` stays one
line whatever the path holds."""

from __future__ import annotations

import pytest
import typer
from typer.testing import CliRunner

from noiseshift.cli import app
from noiseshift.cli.common import fail


@pytest.mark.parametrize("command", ["train", "train-estimator"])
@pytest.mark.parametrize("option", [["--lr", "1e38"], ["--dim", "100000000"]])
def test_out_of_range_options_name_the_option(tmp_path, command, option):
    res = CliRunner().invoke(app, [command, "--data", "gmm", *option,
                                   "--out", str(tmp_path / "m.pt")])
    assert res.exit_code == 2
    assert option[0] in res.output and "Traceback" not in res.output
    assert not (tmp_path / "m.pt").exists()


def test_fail_is_one_line_for_a_path_with_a_newline(capsys):
    with pytest.raises(typer.Exit):
        fail("not a trajectory file", "odd\nname.h5")
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "odd\\nname.h5" in err
