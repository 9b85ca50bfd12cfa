"""The encoder: descriptor definition, pooling, offline pretrained weights, save / load, clear errors."""

from __future__ import annotations

import pytest
import timm
import torch
from safetensors.torch import save_file

import vitrieval
from vitrieval.config import ModelConfig
from vitrieval.model import Encoder, PretrainedWeightsError, load

TINY = dict(name="deit_tiny_patch16_224", pretrained=False, image_size=32, patch_size=8)


def tiny(**kw) -> Encoder:
    torch.manual_seed(0)
    return Encoder(ModelConfig(**{**TINY, **kw})).eval()


def test_descriptor_is_the_l2_normalised_cls_token_of_forward_features():
    enc = tiny()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        z = enc(x)
        cls = enc.backbone.forward_features(x)[:, 0]
    assert z.shape == (3, 192)
    assert torch.allclose(z, torch.nn.functional.normalize(cls, dim=1), atol=1e-6)
    assert torch.allclose(z.norm(dim=1), torch.ones(3), atol=1e-6)


def test_distilled_model_uses_token_0_not_the_cls_distillation_average():
    torch.manual_seed(0)
    enc = Encoder(ModelConfig(name="deit_tiny_distilled_patch16_224", pretrained=False, image_size=32)).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        tokens = enc.backbone.forward_features(x)
        z = enc(x)
    assert enc.pool.num_prefix_tokens == 2
    assert torch.allclose(z, torch.nn.functional.normalize(tokens[:, 0], dim=1), atol=1e-6)
    avg = torch.nn.functional.normalize((tokens[:, 0] + tokens[:, 1]) / 2, dim=1)
    assert not torch.allclose(z, avg, atol=1e-3)


@pytest.mark.parametrize("pooling", ["avg", "max", "gem"])
def test_patch_token_pooling(pooling):
    enc = tiny(pooling=pooling)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        patches = enc.backbone.forward_features(x)[:, 1:]
        z = enc(x)
    ref = {"avg": patches.mean(1), "max": patches.amax(1),
           "gem": patches.clamp(min=1e-6).pow(3).mean(1).pow(1 / 3)}[pooling]
    assert torch.allclose(z, torch.nn.functional.normalize(ref, dim=1), atol=1e-5)


def test_projection_and_learnable_gem():
    enc = tiny(pooling="gem", gem_learnable=True, projection_dim=64)
    assert enc.descriptor_dim == 64 and isinstance(enc.pool.gem.p, torch.nn.Parameter)
    enc(torch.randn(2, 3, 32, 32)).sum().backward()
    assert enc.pool.gem.p.grad is not None


def test_offline_pretrained_file_loads_through_timm(tmp_path):
    torch.manual_seed(1)
    source = timm.create_model("deit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8)
    for ext in ("safetensors", "pth"):
        path = tmp_path / f"weights.{ext}"
        sd = {k: v.contiguous() for k, v in source.state_dict().items()}
        save_file(sd, str(path)) if ext == "safetensors" else torch.save({"model": sd}, path)
        enc = Encoder(ModelConfig(**{**TINY, "pretrained": True, "pretrained_file": str(path)}))
        assert torch.equal(enc.backbone.blocks[0].attn.qkv.weight, source.blocks[0].attn.qkv.weight)
        assert torch.equal(enc.backbone.cls_token, source.cls_token)


def test_pretrained_file_of_another_architecture_fails_naming_file_and_keys(tmp_path):
    other = timm.create_model("deit_small_patch16_224", pretrained=False, img_size=32, patch_size=8)
    path = tmp_path / "small.safetensors"
    save_file({k: v.contiguous() for k, v in other.state_dict().items()}, str(path))
    with pytest.raises(PretrainedWeightsError,
                       match=r"small\.safetensors do not fit deit_tiny.*shape mismatch.*blocks\.0\.attn"):
        Encoder(ModelConfig(**{**TINY, "pretrained": True, "pretrained_file": str(path)}))


def test_missing_pretrained_file_is_named(tmp_path):
    with pytest.raises(PretrainedWeightsError, match="nowhere.pth"):
        Encoder(ModelConfig(**{**TINY, "pretrained": True, "pretrained_file": str(tmp_path / "nowhere.pth")}))


def test_save_load_round_trip_with_pca(tmp_path):
    from vitrieval.pca import PCAReduction

    enc = tiny()
    x = torch.randn(40, 3, 32, 32)
    with torch.no_grad():
        feats = enc(x).numpy()
    enc.set_pca(PCAReduction.fit(feats, 16))
    enc.save(tmp_path / "m")
    back = vitrieval.load(tmp_path / "m")
    assert back.descriptor_dim == 16
    assert back.fingerprint() == enc.fingerprint()
    a, b = enc.embed(x[:5]), back.embed(x[:5])
    assert a.shape == (5, 16) and abs(a - b).max() < 1e-5


def test_loading_weights_of_another_architecture_is_refused(tmp_path):
    tiny().save(tmp_path / "m")
    cfg = (tmp_path / "m" / "config.json").read_text().replace('"deit_tiny_patch16_224"', '"deit_small_patch16_224"')
    (tmp_path / "m" / "config.json").write_text(cfg)
    with pytest.raises(PretrainedWeightsError, match="model.safetensors does not fit.*deit_small"):
        load(tmp_path / "m")


def test_gem_on_a_distilled_backbone_pools_patch_tokens_only_and_learns_p():
    """GeM for every backbone: the 2 prefix tokens of a distilled DeiT are left out; a learnable p gets a gradient."""
    torch.manual_seed(0)
    cfg = ModelConfig(name="deit_tiny_distilled_patch16_224", pretrained=False, image_size=32, pooling="gem",
                      gem_p=3.0, gem_learnable=True)
    enc = Encoder(cfg)
    x = torch.randn(2, 3, 32, 32)
    tokens = enc.backbone.forward_features(x)
    patches = tokens[:, 2:].clamp(min=1e-6)
    expected = torch.nn.functional.normalize(patches.pow(3).mean(dim=1).pow(1 / 3), dim=1)
    z = enc(x)
    assert tokens.shape[1] == 2 + 4 and torch.allclose(z, expected, atol=1e-5)
    z.sum().backward()
    assert enc.pool.gem.p.grad is not None and float(enc.pool.gem.p.grad.abs()) > 0


# -- the model folder: one resolver, the PCA and extra keys carried through save ----------------------------------

def test_resolve_model_dir_accepts_a_run_folder_or_its_model_folder(tmp_path):
    from vitrieval.model import resolve_model_dir

    model_dir = tiny().save(tmp_path / "run" / "model")
    assert resolve_model_dir(tmp_path / "run") == model_dir
    assert resolve_model_dir(str(tmp_path / "run")) == model_dir  # str or Path
    assert resolve_model_dir(model_dir) == model_dir
    assert resolve_model_dir(tmp_path / "nothing") == tmp_path / "nothing"  # kept: the caller's error names it
    tiny(depth=1).save(tmp_path / "run")  # a folder's own config.json wins over a model/ sub-folder
    assert resolve_model_dir(tmp_path / "run") == tmp_path / "run"
    # load uses the same rule
    assert load(tmp_path / "run" / "model").fingerprint() == load(model_dir).fingerprint() == tiny().fingerprint()
    with pytest.raises(FileNotFoundError, match="nothing is not a vitrieval model folder"):
        load(tmp_path / "nothing")


def test_load_of_a_run_folder_reads_its_model_subfolder(tmp_path):
    enc = tiny()
    enc.save(tmp_path / "run" / "model")
    assert vitrieval.load(tmp_path / "run").fingerprint() == enc.fingerprint()


def test_at_image_size_resamples_position_embeddings_on_a_copy():
    from vitrieval.model import at_image_size

    enc = tiny()
    assert at_image_size(enc, None) is enc and at_image_size(enc, 32) is enc
    bigger = at_image_size(enc, 48)
    assert bigger is not enc
    assert bigger.data_config == {**enc.data_config, "image_size": 48} and enc.data_config["image_size"] == 32
    assert tuple(bigger.backbone.pos_embed.shape) == (1, 1 + 6 * 6, 192)  # 48 px / patch 8: 6 x 6 tokens
    assert tuple(enc.backbone.pos_embed.shape) == (1, 1 + 4 * 4, 192)  # the original is untouched
    with torch.no_grad():
        assert bigger(torch.randn(2, 3, 48, 48)).shape == (2, 192)
        assert enc(torch.randn(2, 3, 32, 32)).shape == (2, 192)
    # same weights: the class token and the blocks are shared values, only the position grid is resampled
    assert torch.equal(bigger.backbone.cls_token, enc.backbone.cls_token)
    assert torch.equal(bigger.backbone.blocks[0].attn.qkv.weight, enc.backbone.blocks[0].attn.qkv.weight)
    with pytest.raises(ValueError, match="must be positive"):
        at_image_size(enc, 0)
    fixed = tiny()
    fixed.backbone = torch.nn.Identity()  # a backbone without set_input_size
    with pytest.raises(ValueError, match="cannot change the input size.*32"):
        at_image_size(fixed, 48)


def _fitted_pca(enc: Encoder, dim: int = 8):
    from vitrieval.pca import PCAReduction

    with torch.no_grad():
        feats = enc(torch.randn(40, 3, 32, 32)).numpy()
    return PCAReduction.fit(feats, dim)


def test_save_carries_the_pca_record_and_the_folders_other_keys(tmp_path):
    import json

    directory = tiny().save(tmp_path / "m", extra={"run": "r1", "trained_iterations": 7})
    enc = load(directory)
    assert enc.extra_info == {"run": "r1", "trained_iterations": 7} and enc.pca_info is None
    info = {"dim": 8, "whiten": False, "fitted_on": "folder/train"}
    enc.set_pca(_fitted_pca(enc), info)
    enc.save(directory)  # what evaluate does: attach, save
    meta = json.loads((directory / "config.json").read_text())
    assert meta["pca"] == info and meta["descriptor_dim"] == 8 and meta["feature_dim"] == 192
    assert (meta["run"], meta["trained_iterations"]) == ("r1", 7)
    assert meta["fingerprint"] == enc.fingerprint()
    assert set(meta) == {"format", "version", "model", "data_config", "feature_dim", "descriptor_dim",
                         "fingerprint", "run", "trained_iterations", "pca"}
    back = load(directory)
    assert back.pca_info == info and back.extra_info == {"run": "r1", "trained_iterations": 7}
    assert torch.equal(back.pca.matrix, enc.pca.matrix) and back.descriptor_dim == 8
    # ``extra`` still wins; detaching the PCA drops its file and its record, not the other keys
    back.set_pca(None, info)
    assert back.pca_info is None
    back.save(directory, extra={"trained_iterations": 9})
    meta = json.loads((directory / "config.json").read_text())
    assert "pca" not in meta and meta["descriptor_dim"] == 192
    assert (meta["run"], meta["trained_iterations"]) == ("r1", 9)
    assert not (directory / "pca.safetensors").exists()


def test_a_pca_attached_without_a_record_writes_none(tmp_path):
    import json

    enc = tiny()
    enc.set_pca(_fitted_pca(enc))
    directory = enc.save(tmp_path / "m")
    assert "pca" not in json.loads((directory / "config.json").read_text())
    back = load(directory)
    assert back.pca is not None and back.pca_info is None and back.extra_info == {}


def test_a_folder_in_the_earlier_layout_still_loads(tmp_path):
    """What ``save_pca_beside_model`` wrote (the PCA record passed as ``extra``) reads as the same record."""
    import json

    enc = tiny()
    pca = _fitted_pca(enc, 4)
    enc.set_pca(pca)
    info = {"dim": 4, "whiten": False, "fitted_on": "sop/train"}
    directory = enc.save(tmp_path / "old", extra={"trained_iterations": 3, "pca": info})
    before = json.loads((directory / "config.json").read_text())
    back = load(directory)
    assert back.pca_info == info and back.extra_info == {"trained_iterations": 3}
    assert torch.equal(back.pca.matrix, pca.matrix)
    back.save(directory)  # saved again: the same keys and values
    assert json.loads((directory / "config.json").read_text()) == before


def _sign_aligned(got, ref):
    """``ref`` with each column's sign flipped to match ``got`` (a principal direction's sign is arbitrary)."""
    import numpy as np

    return ref * np.sign((got * ref).sum(axis=0, keepdims=True))


def test_pca_comes_before_the_final_l2_normalisation():
    """§3.2 "we optionally reduce the vector by PCA before normalizing it": embed() = L2(PCA(pooled)), the PCA
    fitted on the pooled vectors — checked against numpy's eigen-decomposition of the pooled tokens computed here
    from forward_features, and shown to differ from the other order L2(PCA(L2(pooled)))."""
    import numpy as np

    from vitrieval.pca import PCAReduction

    enc = tiny(pooling="avg", depth=2)  # averaged tokens: pooled norms vary (a LayerNormed CLS token's barely do)
    torch.manual_seed(1)
    x = torch.randn(40, 3, 32, 32) * torch.linspace(0.2, 3.0, 40)[:, None, None, None]
    with torch.no_grad():
        tokens = enc.backbone.forward_features(x)
    pooled = tokens[:, enc.backbone.num_prefix_tokens:].mean(dim=1).double().numpy()
    norms = np.linalg.norm(pooled, axis=1)
    assert norms.max() / norms.min() > 1.05

    def pca_then_l2(f: np.ndarray, dim: int = 6) -> np.ndarray:
        centred = f - f.mean(axis=0)
        eigval, eigvec = np.linalg.eigh(centred.T @ centred / len(f))
        y = centred @ eigvec[:, np.argsort(eigval)[::-1][:dim]]
        return y / np.linalg.norm(y, axis=1, keepdims=True)

    with torch.no_grad():
        np.testing.assert_allclose(enc.pooled(x).double().numpy(), pooled, rtol=1e-5, atol=1e-5)
        enc.set_pca(PCAReduction.fit(enc.pooled(x).numpy(), 6))
    got = enc.embed(x, amp="off")
    assert got.shape == (40, 6)
    expected = pca_then_l2(pooled)
    np.testing.assert_allclose(got, _sign_aligned(got, expected), atol=2e-4)
    unit = pooled / norms[:, None]
    other_order = _sign_aligned(got, pca_then_l2(unit))
    assert np.abs(got - other_order).max() > 1e-2  # the test tells the two orders apart
    # forward (training) stays L2(pooled), without the PCA
    with torch.no_grad():
        np.testing.assert_allclose(enc(x).double().numpy(), unit, atol=1e-5)


def test_the_log_names_the_pretrained_file_and_what_was_resampled(tmp_path, caplog):
    """A 224 px / patch 16 file into a 64 px / patch 8 model: timm resamples the patch kernel and the position
    embeddings (197 = 14 x 14 + 1 tokens -> 65 = 8 x 8 + 1); one INFO line (in train.log) says so."""
    torch.manual_seed(2)
    source = timm.create_model("deit_tiny_patch16_224", pretrained=False, depth=2)
    path = tmp_path / "deit_tiny.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    with caplog.at_level("INFO", logger="vitrieval.model"):
        Encoder(ModelConfig(name="deit_tiny_patch16_224", pretrained=True, pretrained_file=str(path), image_size=64,
                            patch_size=8, depth=2))
        Encoder(ModelConfig(name="deit_tiny_patch16_224", pretrained=True, pretrained_file=str(path), image_size=224,
                            depth=2))
    assert [r.getMessage() for r in caplog.records if r.name == "vitrieval.model"] == [
        f"model.pretrained_file: loaded {path} into deit_tiny_patch16_224; resampled patch 16 -> 8, 197 -> 65 "
        "position tokens",
        f"model.pretrained_file: loaded {path} into deit_tiny_patch16_224 (no resampling)"]
