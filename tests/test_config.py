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


def test_every_size_preset_has_its_whole_row():
    """(d_model, n_layers, n_heads, d_ff, vocab_size, max_seq_len) of each named size."""
    rows = {
        "tiny": (128, 4, 4, 384, 512, 2048),
        "nano": (512, 6, 8, 1408, 8192, 2048),
        "50M": (512, 8, 8, 1408, 32000, 2048),
        "125M": (768, 12, 12, 2048, 32000, 2048),
        "300M": (1024, 24, 16, 2816, 32000, 2048),
        "350M": (1024, 24, 16, 3072, 32000, 2048),
        "760M": (1280, 36, 20, 3456, 32000, 2048),
        "1B": (2048, 18, 16, 5504, 32000, 4096),
        "1B-16k": (2048, 18, 16, 5504, 32000, 16384),
    }
    assert set(rows) == set(SIZES)
    for size, row in rows.items():
        cfg = build_config("baseline", size)
        assert (cfg.d_model, cfg.n_layers, cfg.n_heads, cfg.d_ff, cfg.vocab_size, cfg.max_seq_len) == row, size
    assert build_config("baseline", "1B-16k").kv_heads == 4


def test_a_width_depth_pair_has_a_head_per_64_channels_and_an_8192_vocabulary():
    cfg = build_config("baseline", "d192l3")
    assert (cfg.d_model, cfg.n_layers, cfg.n_heads, cfg.vocab_size, cfg.max_seq_len) == (192, 3, 3, 8192, 2048)
    assert build_config("baseline", "d32l2").n_heads == 1  # at least one head


def test_variant_presets_follow_the_variant_table():
    """README's table: latent segments of 64 (16 at tiny), ssm state 64 (128 from d_model 1024), cdm_v3."""
    assert [build_config("latent", size).recursion.segment_len for size in ("tiny", "nano")] == [16, 64]
    assert [build_config("ssm", size).ssm.d_state for size in ("tiny", "125M", "350M", "1B")] == [64, 64, 128, 128]
    cfg = build_config("cdm_v3", "tiny")
    assert (cfg.cdm.version, cfg.cdm.hard_routing, cfg.cdm.load_balance, cfg.cdm.entropy_reg, cfg.max_seq_len) == (
        "v3", True, 0.01, 0.02, 512)
    assert (cfg.d_model, cfg.n_layers, cfg.n_heads, cfg.kv_heads, cfg.d_ff) == (384, 8, 8, 4, 1024)


def test_non_embedding_params_leave_out_the_embedding_and_an_untied_head():
    untied, tied = describe("cdm_code", "tiny"), describe("baseline", "tiny")
    assert untied["params"] - untied["non_embedding_params"] == 2 * 512 * 384 == 393216  # embedding + head
    assert tied["params"] - tied["non_embedding_params"] == 512 * 128  # the head is the embedding


def test_describe_measures_state_and_flops_at_the_context_length_asked():
    row = describe("baseline", "tiny", context_len=100)
    model = memlab.build_model("baseline", "tiny")
    assert row["state_bytes_per_sequence"] == 2 * 4 * 100 * 128 * 4 == 409600  # (k, v) x layers x T x d x fp32
    assert row["flops_per_token"] == model.estimate_flops_per_token(100) < model.estimate_flops_per_token(2048)


def test_the_variants_table_puts_all_params_before_the_non_embedding_ones():
    from memlab.analysis.info import variants_table

    table = variants_table([describe("cdm_code", "tiny", context_len=100)])
    assert table.splitlines()[0].startswith("| variant | size | params | non-embedding | pattern |")
    assert "| cdm_code | tiny | 18.40M | 18.00M | `KKKKKKKK` | 1.43MB @ 100 |" in table


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
        (lambda: build_config("baseline", "tiny", bogus=1), "unknown model field 'bogus'"),
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


def test_a_keyword_override_spells_the_dot_of_a_sub_config_field_with_two_underscores():
    assert build_config("gdn", "tiny", gdn__chunk_size=16).gdn.chunk_size == 16
    assert build_config("gdn", "tiny", **{"gdn.chunk_size": 16}) == build_config("gdn", "tiny", gdn__chunk_size=16)
    assert memlab.build_model("cdm", "tiny", cdm__n_slots=8).config.cdm.n_slots == 8


@pytest.mark.parametrize("variant", ["gdn", "gdn_hybrid"])
def test_local_drop_prob_is_checked_whatever_the_pattern(variant):
    """Only a pattern with a 'W' layer had checked it: gdn trained with --gdn.local-drop-prob 1.5."""
    with pytest.raises(MemlabError, match=r"gdn.local_drop_prob must lie in \[0, 1\), got 1.5"):
        memlab.build_model(variant, "d32l2", gdn__local_drop_prob=1.5)
