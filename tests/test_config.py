"""Configs, size presets, variant registry and their errors."""

from __future__ import annotations

import pytest

import memlab
from memlab.analysis.info import describe
from memlab.config import SIZES, ModelConfig, build_config
from memlab.errors import MemlabError


def test_every_size_preset_builds_with_the_documented_shape():
    shapes = {"nano": (512, 6), "50M": (512, 8), "125M": (768, 12), "350M": (1024, 24), "760M": (1280, 36),
              "1B": (2048, 18), "1B-16k": (2048, 18)}
    for size, (d, n) in shapes.items():
        cfg = build_config("baseline", size)
        assert (cfg.d_model, cfg.n_layers) == (d, n)
    assert build_config("baseline", "1B-16k").max_seq_len == 16384
    assert build_config("baseline", "1B-16k").kv_heads < build_config("baseline", "1B-16k").n_heads
    assert set(SIZES) >= {"tiny", "nano", "50M", "125M", "300M", "350M", "760M", "1B", "1B-16k"}


def test_parameter_counts_are_measured_and_near_nominal():
    tiny, nano = describe("baseline", "tiny"), describe("baseline", "nano")
    assert 0.5e6 < tiny["params"] < 2e6
    assert 15e6 < nano["non_embedding_params"] < 22e6  # the source's "~18M"
    model = memlab.build_model("baseline", "tiny")
    assert tiny["params"] == model.num_params() == sum(p.numel() for p in model.parameters())


def test_width_depth_pair_and_dotted_overrides():
    cfg = build_config("baseline", "d192l3", **{"attention.window": 16, "n_kv_heads": 1})
    assert (cfg.d_model, cfg.n_layers, cfg.attention.window, cfg.kv_heads) == (192, 3, 16, 1)


def test_a_variant_builds_on_the_overridden_size_and_overrides_win_over_the_variant():
    assert build_config("gdn_hybrid", "tiny", n_layers=12).pattern == build_config("gdn_hybrid", "d128l12").pattern
    assert build_config("gdn_hybrid", "d128l12").pattern == "GGGGGW" * 2  # not tiny's GGGW tiled
    assert build_config("gdn_hybrid", "tiny", layer_pattern="GGW").pattern == "GGWG"
    assert build_config("cdm_v3", "tiny", n_layers=2).n_layers == 2  # the variant fixes 8 layers; asked for 2


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: build_config("no_such_variant"), "unknown variant 'no_such_variant'; valid choices: act, baseline, cdm"),
        (lambda: build_config("baseline", "7T"), "unknown size '7T'"),
        (lambda: build_config("baseline", "tiny", n_heads=3), "not divisible by n_heads=3"),
        (lambda: build_config("baseline", "tiny", n_kv_heads=3), "not divisible by n_kv_heads=3"),
        (lambda: build_config("baseline", "tiny", layer_pattern="AZ"), "unknown letters ['Z']"),
        # a pattern cut short loses a kind of layer: a gdn_hybrid of 1 layer had had no hybrid layer
        (lambda: build_config("gdn_hybrid", "tiny", n_layers=1), "cuts the layer pattern 'GW' to 'G', which has no W"),
        (lambda: build_config("baseline", "tiny", layer_pattern="GGGGGW"), "give at least 6 layers"),
        (lambda: build_config("baseline", "tiny", bogus=1), "unknown config field 'bogus'"),
        # every bound and choice is checked here, before a mixer would fail inside a reshape or a modulo
        (lambda: build_config("ssm", "tiny", **{"ssm.d_state": 0}), "ssm.d_state must be >= 1, got 0"),
        (lambda: build_config("ssm", "tiny", **{"ssm.n_groups": 0}), "ssm.n_groups must be >= 1, got 0"),
        (lambda: build_config("cdm", "tiny", **{"cdm.n_slots": 0}), "cdm.n_slots must be >= 1, got 0"),
        (lambda: build_config("gdn_swa", "tiny", **{"attention.window": 0}), "attention.window must be >= 1, got 0"),
        (lambda: build_config("baseline", "tiny", norm_eps=float("nan")), "norm_eps must be a finite number, got nan"),
        (lambda: build_config("baseline", "tiny", d_ff=-5), "d_ff must be >= 0, got -5"),
        (lambda: build_config("act", "tiny", **{"recursion.lambda_ponder": -1.0}), "lambda_ponder must be >= 0"),
        (lambda: build_config("ssm", "tiny", **{"ssm.dt_min": 0.5}), "ssm.dt_min=0.5 exceeds ssm.dt_max=0.1"),
        (lambda: build_config("baseline", "tiny", pos_encoding="alibi"),
         "unknown pos_encoding 'alibi'; valid choices: learned, none, rope"),
        (lambda: build_config("cdm", "tiny", cdm={"readout": "sum"}), "unknown cdm.readout 'sum'; valid choices: both"),
        (lambda: build_config("baseline", "tiny", d_model="wide"), "d_model must be of type int, got 'wide'"),
    ],
)
def test_bad_configs_raise_one_clear_line(call, message):
    with pytest.raises(MemlabError) as e:
        call()
    assert message in str(e.value) and "\n" not in str(e.value)


def test_config_dict_round_trip():
    cfg = build_config("baseline", "tiny", **{"attention.window": 7})
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
