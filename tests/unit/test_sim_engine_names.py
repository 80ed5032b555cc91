"""``rhvfs sim serve --engine-name``: another engine's ids for the same sample names."""

from __future__ import annotations

from pathlib import Path

import pytest

from rhvfs.sim import cli as sim_cli
from rhvfs.sim.sample import sid


def test_engine_names_give_other_fixed_ids() -> None:
    parts = [("dc", "Default"), ("cluster", "Default"), ("sd", "mydata"), ("vnicprofile", "x")]
    for p in parts:
        default, a, b = sid(*p), sid(*p, engine="site-a"), sid(*p, engine="site-b")
        assert len({default, a, b}) == 3, p
        assert sid(*p, engine="site-a") == a  # the same on every run
        assert sid(*p, engine="") == default  # no name: the ids every release had
    # the default engine's ids did not change (state dirs and tests keep working)
    assert sid("dc", "Default") == "2cbdc780-9b94-5e32-9582-d51fceea0a11"


@pytest.mark.parametrize("option", [["--engine-name", "b"], ["--extra-network", "dmz"]])
def test_they_need_the_sample(tmp_path: Path, option: list[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        sim_cli.main(["serve", "--state-dir", str(tmp_path), *option])
    assert exit_.value.code == 2
    assert not any(tmp_path.iterdir())
