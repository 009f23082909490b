"""Configuration: validated on construction, split by concern, defaults equal the default preset."""

from __future__ import annotations

import pytest

from napari_stentrans.core.config import (
    Config,
    DataConfig,
    ModelConfig,
    OptimConfig,
    PairConfig,
    Runtime,
    preset,
)
from napari_stentrans.core.errors import ConfigError, StentransError


def test_defaults_are_the_default_preset_and_train_nothing():
    assert Config() == preset("default", "square") == preset("default", "hex")
    assert Config().optim.epochs == 0 and not Config().learns
    assert preset("transformer").learns and preset("transformer").optim.epochs == 20
    assert (
        preset("published", "hex").data.raster == "brick"
        and not preset("published", "square").network.residual
    )


@pytest.mark.parametrize(
    ("options", "field", "value"),
    [
        ({"epochs": -3}, "epochs", "-3"),
        ({"batch_size": 0}, "batch_size", "0"),
        ({"val_fraction": 2.0}, "val_fraction", "2.0"),
        ({"val_sites": 1.0}, "val_sites", "1.0"),
        ({"lr": 0.0}, "lr", "0.0"),
        ({"betas": (1.5, 0.9)}, "betas", "1.5"),
        ({"eps": -1e-8}, "eps", "-1e-08"),
        ({"patience": 0}, "patience", "0"),
        ({"min_detection": 1.5}, "min_detection", "1.5"),
        ({"n_train_genes": 0}, "n_train_genes", "0"),
        ({"normalization": "log1P"}, "normalization", "'log1P'"),
        ({"raster": "hexagon"}, "raster", "'hexagon'"),
        ({"smoothers": "cubic"}, "smoothers", "'cubic'"),
        ({"calibration_bandwidth": 0.0}, "calibration_bandwidth", "0.0"),
        ({"calibration_prior": -5.0}, "calibration_prior", "-5.0"),
        ({"blob_fraction": float("nan")}, "blob_fraction", "nan"),
        ({"patch_size": 0}, "patch_size", "0"),
        ({"heads": 3, "embed_dim": 64}, "heads", "3"),
        ({"cosets": "yes"}, "cosets", "'yes'"),
        ({"seed": -1}, "seed", "-1"),
        ({"epochs": 2.5}, "epochs", "2.5"),
    ],
)
def test_each_invalid_value_names_the_field_the_value_and_what_is_allowed(options, field, value):
    with pytest.raises(ConfigError, match=rf"^{field}: {value} is not allowed; expected") as info:
        preset("transformer", "square", **options)
    assert isinstance(info.value, StentransError) and "\n" not in str(info.value)


def test_sections_validate_on_their_own_and_the_device_is_a_runtime_choice():
    with pytest.raises(ConfigError, match="epochs: -3"):
        OptimConfig(epochs=-3)
    with pytest.raises(ConfigError, match="val_fraction: 2.0"):
        PairConfig(val_fraction=2.0)
    with pytest.raises(ConfigError, match="normalization: 'log1P'"):
        DataConfig(normalization="log1P")
    with pytest.raises(ConfigError, match="a divisor of the token width 18"):
        ModelConfig(patch_size=2, embed_dim=18, heads=4)
    with pytest.raises(ConfigError, match="device: 'tpu' is not allowed"):
        Runtime(device="tpu")
    assert Runtime(device="cuda:1").device == "cuda:1"
    with pytest.raises(ConfigError, match="device: a runtime choice"):
        preset("default", device="cuda")
    assert "device" not in str(Config().to_dict())


def test_unknown_options_and_presets_are_listed():
    with pytest.raises(ConfigError, match=r"unknown option\(s\) \['epoch'\]; known: .*epochs"):
        preset("default", epoch=3)
    with pytest.raises(ConfigError, match="preset: 'fancy' is not allowed"):
        preset("fancy")
    with pytest.raises(ConfigError, match="lattice_kind: 'triangle' is not allowed"):
        preset("default", "triangle")


def test_inconsistent_combinations_are_refused():
    with pytest.raises(
        ConfigError, match="normalization: 'none' is not allowed; expected 'log1p' with a correction"
    ):
        preset("transformer", normalization="none")
    with pytest.raises(
        ConfigError, match="raster: 'brick' is not allowed; expected 'index' with a correction"
    ):
        preset("default", raster="brick")
    with pytest.raises(
        ConfigError, match="in_channels: 1 is not allowed; expected 3 for a correction network"
    ):
        preset("transformer", in_channels=1)


def test_round_trips_and_overrides():
    config = preset(
        "transformer", "hex", epochs=3, patch_size=2, embed_dim=16, heads=2, patience=None, seed=4
    )
    assert Config.from_dict(config.to_dict()) == config
    assert config.optim.patience is None and config.network.width == 16
    flat = config.flat()
    assert flat["epochs"] == 3 and flat["patch_size"] == 2 and flat["preset"] == "transformer"
    # format 1 checkpoints stored a flat config with the device it trained on
    legacy = {k: v for k, v in flat.items() if k not in ModelConfig.__dataclass_fields__}
    legacy.update(model=dict(config.network.__dict__), device="cuda:0")
    for new in ("depth_choice", "gap_smoothers", "basis_genes"):
        legacy.pop(new)
    assert Config.from_flat(legacy) == config
    with pytest.raises(ConfigError, match=r"optim: unknown option\(s\) \['momentum'\]"):
        Config.from_dict({**config.to_dict(), "optim": {"momentum": 0.9}})


def test_preset_takes_the_lattice_from_the_slide_and_published_requires_one():
    from helpers import block_sites, make_slide
    from napari_stentrans.core.slide import Slide

    r, c = block_sites("hex", 6, 8)
    visium = make_slide(r, c, "hex")
    # a Visium user gets the Visium recipe (patch 8, 10 epochs, brick raster), never ST's silently
    assert preset("published", visium) == preset("published", "hex") != preset("published", "square")
    assert preset("published", Slide.from_adata(visium)).network.patch_size == 8
    with pytest.raises(ConfigError, match="lattice_kind: the published recipe differs"):
        preset("published")
    with pytest.raises(ConfigError, match="lattice_kind: 42 is not allowed"):
        preset("default", 42)
    assert preset("default") == preset("default", visium) == Config()  # lattice-free presets


def test_numpy_scalars_are_taken_as_the_python_numbers_they_hold():
    """A value computed with NumPy (np.float32 is no float subclass, np.int64 no int) passes
    the same checks and is stored as a plain number (a model's JSON holds no NumPy types)."""
    import json

    import numpy as np

    config = preset(
        "default", "hex", min_detection=np.float32(0.25), n_train_genes=np.int64(500), seed=np.int32(3)
    )
    assert (config.data.min_detection, config.data.n_train_genes, config.seed) == (0.25, 500, 3)
    # the value it shows, not the float32 it holds (0.05000000074505806 in a saved model)
    assert preset("default", "hex", min_detection=np.float32(0.05)).data.min_detection == 0.05
    assert type(config.data.n_train_genes) is int and type(config.seed) is int
    json.dumps(config.to_dict())
    with pytest.raises(ConfigError, match=r"^n_train_genes: 0 is not allowed"):
        preset("default", "hex", n_train_genes=np.int64(0))
    with pytest.raises(ConfigError, match=r"^min_detection: array\("):  # an array is no number
        preset("default", "hex", min_detection=np.array([0.1, 0.2]))


@pytest.mark.parametrize(
    ("name", "options", "why"),
    [
        ("published", {"calibration_bandwidth": 2.0}, "the published recipe writes its raw counts"),
        ("default", {"calibrate_counts": False, "calibration_prior": 5.0}, "calibrate_counts is False"),
    ],
)
def test_a_count_calibration_setting_nothing_would_use_is_refused(name, options, why):
    """Silently ignored before: the user believed the counts were calibrated as asked."""
    key = next(k for k in options if k.startswith("calibration_"))
    with pytest.raises(ConfigError, match=rf"^{key}: .*{why}: nothing would use it"):
        preset(name, "hex", **options)
    assert preset("default", "hex", calibration_bandwidth=None).classical.calibration_bandwidth is None


def test_a_preset_given_as_an_option_is_refused_not_used_as_a_label():
    """``st.fit(adata, preset="published")`` made a default model labelled "published"."""
    with pytest.raises(
        ConfigError, match=r"^preset: 'published' as an option would only rename this 'default'"
    ):
        preset("default", "hex", preset="published")
    assert preset("default", "hex", preset="default") == preset("default", "hex")  # the same: harmless
    with pytest.raises(ConfigError, match=r"or None for one factor per gene over the whole slide"):
        preset("default", "hex", calibration_bandwidth="slide")  # the CLI's word, in Python


def test_fit_refuses_a_preset_keyword_that_names_another_preset():
    import napari_stentrans as st
    from helpers import block_sites, make_slide

    adata = make_slide(*block_sites("hex", 8, 12), "hex", n_genes=12)
    with pytest.raises(ConfigError, match=r"^preset: 'published'.*st\.fit\(adata, 'published'"):
        st.fit(adata, preset="published", calibration_bandwidth=2.0)
