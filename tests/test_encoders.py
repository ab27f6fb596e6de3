import json
import string

import pytest
import torch

transformers = pytest.importorskip("transformers")

from b4m.eval.encoders import CLIP_MEAN, IMAGENET_MEAN, load_clip, load_dinov2, preprocess_images  # noqa: E402

ATOL = 1e-5  # same preprocessed input, same weights: only float summation order differs


def _write_tokenizer(folder):
    """A tiny CLIP BPE tokenizer: start/end tokens, letters with and without ``</w>``, a few merges."""
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for ch in string.ascii_lowercase:
        vocab[ch] = len(vocab)
        vocab[ch + "</w>"] = len(vocab)
    merges = ["t h", "th e</w>", "o f</w>", "c a", "ca t</w>"]
    for merge in merges:
        vocab["".join(merge.split())] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    tok = transformers.CLIPTokenizer(
        str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=16
    )
    return tok, len(vocab)


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clip")
    tok, vocab_size = _write_tokenizer(folder)
    torch.manual_seed(0)
    text = dict(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=16,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
    )
    vision = dict(
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=30,
        patch_size=6,
    )
    config = transformers.CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)
    model = transformers.CLIPModel(config).eval()
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder, model, tok


def test_clip_features_match_direct_forward(tiny_clip):
    folder, model, tok = tiny_clip
    enc = load_clip(folder)
    images = torch.rand(3, 3, 32, 40)
    feats = enc.image_features(images)
    assert feats.shape == (3, 16)
    assert torch.allclose(feats.norm(dim=-1), torch.ones(3), atol=1e-5)
    pixels = preprocess_images(images, 30, CLIP_MEAN, enc.std)
    assert pixels.shape == (3, 3, 30, 30)
    with torch.no_grad():
        ref = model.visual_projection(model.vision_model(pixel_values=pixels).pooler_output)
    assert torch.allclose(feats, torch.nn.functional.normalize(ref, dim=-1), atol=ATOL)

    texts = ["a photo of the cat", "the teddy"]
    tfeats = enc.text_features(texts)
    assert tfeats.shape == (2, 16)
    assert torch.allclose(tfeats.norm(dim=-1), torch.ones(2), atol=1e-5)
    tokens = tok(texts, padding=True, return_tensors="pt")
    assert tokens["input_ids"].max() < model.config.text_config.vocab_size
    with torch.no_grad():
        out = model.text_model(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"])
        ref = model.text_projection(out.pooler_output)
    assert torch.allclose(tfeats, torch.nn.functional.normalize(ref, dim=-1), atol=ATOL)
    assert not torch.allclose(tfeats[0], tfeats[1])


def test_dinov2_features_match_direct_forward(tmp_path):
    torch.manual_seed(0)
    config = transformers.Dinov2Config(
        image_size=30,
        patch_size=2,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=37,
    )
    model = transformers.Dinov2Model(config).eval()
    model.save_pretrained(tmp_path)
    images = torch.rand(2, 3, 32, 32)
    for pooling in ("cls", "mean"):
        enc = load_dinov2(tmp_path, pooling=pooling)
        assert enc.image_size == 30
        feats = enc.image_features(images)
        assert feats.shape == (2, 32)
        assert torch.allclose(feats.norm(dim=-1), torch.ones(2), atol=1e-5)
        with torch.no_grad():
            out = model(pixel_values=preprocess_images(images, 30, IMAGENET_MEAN, enc.std))
        ref = out.pooler_output if pooling == "cls" else out.last_hidden_state[:, 1:].mean(1)
        assert torch.allclose(feats, torch.nn.functional.normalize(ref, dim=-1), atol=ATOL)


def test_preprocess_reads_processor_config_and_crops(tmp_path):
    (tmp_path / "preprocessor_config.json").write_text(
        json.dumps(
            {"crop_size": {"height": 24, "width": 24}, "image_mean": [0.5] * 3, "image_std": [0.5] * 3}
        )
    )
    config = transformers.Dinov2Config(
        image_size=30,
        patch_size=2,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=37,
    )
    transformers.Dinov2Model(config).save_pretrained(tmp_path)
    enc = load_dinov2(tmp_path)
    assert enc.image_size == 24 and enc.mean == (0.5, 0.5, 0.5)
    x = torch.zeros(1, 3, 20, 40)
    x[..., 10:30] = 1.0  # the centre square is white, the sides black
    out = preprocess_images(x, 24, (0.0,) * 3, (1.0,) * 3)
    assert out.shape == (1, 3, 24, 24) and out[..., 2:-2].min() > 0.99 and out.min() > 0.9
    with pytest.raises(ValueError, match="B, 3, H, W"):
        preprocess_images(torch.zeros(3, 8, 8), 8, (0.0,) * 3, (1.0,) * 3)
