"""The ViT: output shapes for both presets, exact pixel-shuffle geometry, residual start."""

from __future__ import annotations

import pytest
import torch

from napari_stentrans.core.config import ModelConfig, preset
from napari_stentrans.core.model import StEnTransViT


@pytest.mark.parametrize("name", ["default", "published"])
@pytest.mark.parametrize("kind", ["square", "hex"])
@pytest.mark.parametrize("shape", [(13, 17), (24, 32)])
def test_output_is_twice_the_input_for_both_presets(name, kind, shape):
    config = preset(name, kind).network
    model = StEnTransViT(config)
    x = torch.randn(3, config.in_channels, *shape)
    base = torch.randn(3, 2 * shape[0], 2 * shape[1]) if config.residual else None
    out = model(x, base)
    assert out.shape == (3, 2 * shape[0], 2 * shape[1])
    assert torch.isfinite(out).all()


def test_published_architecture_matches_method_md():
    st = preset("published", "square").network
    visium = preset("published", "hex").network
    assert (st.patch_size, st.width, st.heads, st.depth) == (3, 36, 4, 12)
    assert (visium.patch_size, visium.width, visium.heads, visium.depth) == (8, 256, 8, 12)
    model = StEnTransViT(visium)
    assert len(model.blocks.layers) == 12
    assert model.blocks.layers[0].linear1.out_features == 2 * 256  # MLP hidden 2D
    assert model.blocks.layers[0].norm_first
    assert isinstance(model.head, torch.nn.Identity)  # tokens read directly as p^2 x 4 values
    cfg = preset("published", "hex").optim
    assert (cfg.lr, cfg.betas, cfg.eps, cfg.batch_size, cfg.epochs) == (1e-3, (0.5, 0.6), 1e-6, 512, 10)
    assert preset("published", "square").optim.epochs == 50


def test_residual_model_starts_exactly_at_the_base_estimate():
    model = StEnTransViT(ModelConfig(in_channels=3, patch_size=2, embed_dim=16, depth=1, heads=2))
    x = torch.randn(2, 3, 6, 8)
    base = torch.randn(2, 12, 16)
    torch.testing.assert_close(model(x, base), base)
    with pytest.raises(ValueError, match="base estimate"):
        model(x)


def test_reverse_patch_embedding_places_children_in_their_2x2_block():
    p = 2
    config = ModelConfig(
        in_channels=1,
        patch_size=p,
        embed_dim=16,
        depth=1,
        heads=2,
        position_code="none",
        residual=False,
        output_head=True,
    )
    model = StEnTransViT(config)
    with torch.no_grad():
        model.head.weight.zero_()
        # value of output unit k = k: unit k is pixel (s, t) = divmod(k // 4, p), child (du, dv) = divmod(k % 4, 2)
        model.head.bias.copy_(torch.arange(4 * p * p, dtype=torch.float32))
    out = model(torch.zeros(1, 1, 4, 4))[0]
    for a in range(4):
        for b in range(4):
            s, t = a % p, b % p
            for du in range(2):
                for dv in range(2):
                    k = (s * p + t) * 4 + du * 2 + dv
                    assert out[2 * a + du, 2 * b + dv] == k


def test_lattice_position_code_is_the_same_function_of_position_at_any_grid_size():
    model = StEnTransViT(ModelConfig(patch_size=2, embed_dim=16, depth=1, heads=2))
    small = model.position_code(3, 4, torch.device("cpu")).reshape(3, 4, -1)
    large = model.position_code(6, 9, torch.device("cpu")).reshape(6, 9, -1)
    torch.testing.assert_close(small, large[:3, :4])
    published = StEnTransViT(
        ModelConfig(patch_size=2, embed_dim=16, depth=1, heads=2, position_code="index1d")
    )
    s1 = published.position_code(3, 4, torch.device("cpu")).reshape(3, 4, -1)
    l1 = published.position_code(6, 9, torch.device("cpu")).reshape(6, 9, -1)
    assert not torch.allclose(s1[1:], l1[1:3, :4])  # defect 4: the 1-D code moves with the grid width


def test_invalid_configuration_is_refused():
    with pytest.raises(ValueError, match="a divisor of the token width 18"):
        StEnTransViT(ModelConfig(patch_size=2, embed_dim=18, heads=4))
