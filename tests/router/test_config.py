"""A deployment's routing from YAML: rules, energy policy, priors; bad files are one clear error."""

from __future__ import annotations

from pathlib import Path

import pytest

from tierflow.errors import ConfigError
from tierflow.router.config import RoutingConfig
from tierflow.types.tasks import TaskKind
from tierflow.types.tiers import Tier


def test_a_file_sets_rules_policy_and_priors(tmp_path: Path) -> None:
    path = tmp_path / "routing.yaml"
    path.write_text(
        "rules:\n  excluded: {image_2048: [device]}\n"
        "energy_policy:\n  local_only_below_pct: 15\n  metered_avoid: [edge, cloud]\n"
        "priors:\n  image_1024: {edge: 1.2}\n"
    )
    config = RoutingConfig.load(path)
    assert config.rules.allowed(TaskKind.IMAGE_2048) == {Tier.EDGE, Tier.CLOUD}
    assert config.rules.allowed(TaskKind.REALTIME_STREAM) == {Tier.DEVICE}  # the default stays
    assert config.energy_policy.local_only_below_pct == 15
    assert config.energy_policy.metered_avoid == {Tier.EDGE, Tier.CLOUD}
    assert config.energy_policy.prefer_energy_below_pct == 20  # not given: the seed's default
    assert config.matrix().predict(TaskKind.IMAGE_1024, Tier.EDGE) == 1.2
    assert RoutingConfig.from_dict(None) == RoutingConfig()


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("rulez: {}\n", "unknown key.*rulez"),
        ("energy_policy: {local_only_below_pct: 120}\n", "0..100"),
        ("rules: {forced: {text_short: moon}}\n", "unknown tier"),
        ("priors: {image_1024: {edge: -1}}\n", "priors"),
        ("rules: [\n", "not YAML"),
    ],
)
def test_a_bad_file_names_what_is_wrong(tmp_path: Path, text: str, match: str) -> None:
    path = tmp_path / "routing.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=match):
        RoutingConfig.load(path)
    with pytest.raises(ConfigError, match="no-such"):
        RoutingConfig.load(tmp_path / "no-such.yaml")
