"""Third-party architectures from Hugging Face transformers, built from small configs with random
weights (nothing is downloaded), each wrapped to take and return plain tensors.

Every ``build_<name>(size="bench")`` returns ``(model, example_inputs)``, so each works from the CLI:

    hetcc compile examples/hf_models.py:build_bert --targets onnxruntime:cpu,openvino:cpu -o bert.bundle
    python examples/hf_models.py [name ...]        # compile each with hetcc, compare with eager

``size="bench"`` is sized for a 2-core CPU (a forward takes a few to some tens of ms);
``size="tiny"`` is what tests/test_hf_models.py compiles: the same architecture (GQA, cache, encoder
and decoder), one layer or block per stage where the config allows, tiny widths.

The benchmark's models are wrapped to take positional tensors and return ``last_hidden_state`` /
``logits`` (and, for the decode step, the new cache as tensors), so that every path compared
(torch.onnx.export, OpenVINO's converter, ...) sees the same graph. ``build_stock_<family>`` returns
the transformers model as it comes (keyword inputs, a ``ModelOutput``):

    hetcc compile examples/hf_models.py:build_stock_bert --targets onnxruntime:cpu -o bert.bundle

Needs ``pip install transformers`` (the ``hf`` extra).
"""
from __future__ import annotations

import torch
from torch import nn

SIZES = ("bench", "tiny")


def _pick(size: str, bench: dict, tiny: dict) -> dict:
    if size not in SIZES:
        raise ValueError(f"size must be one of {', '.join(SIZES)}, not {size!r}")
    return bench if size == "bench" else tiny


def _ready(model: nn.Module) -> nn.Module:
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def _ids(generator, vocab: int, *shape) -> torch.Tensor:
    return torch.randint(0, vocab, shape, generator=generator)


class LastHidden(nn.Module):
    """A transformers model called with keyword inputs, returning ``last_hidden_state``."""

    def __init__(self, model: nn.Module, names: tuple[str, ...]):
        super().__init__()
        self.model = model
        self.names = names

    def forward(self, *inputs):
        return self.model(**dict(zip(self.names, inputs)), return_dict=True).last_hidden_state


class Logits(nn.Module):
    """A causal LM over a whole prompt (prefill, no cache), returning the logits."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids):
        return self.model(input_ids=input_ids, use_cache=False, return_dict=True).logits


class DecodeStep(nn.Module):
    """One decode step of a causal LM with its KV cache passed in and out as plain tensors:
    ``(input_ids [b,1], position [1], k_0, v_0, k_1, v_1, ...) -> (logits, k_0', v_0', ...)``, where
    each k/v is ``[b, kv_heads, past, head_dim]`` and the returned ones have one more position.
    The cache is rebuilt as a DynamicCache inside forward, so torch.export sees only tensors."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids, position, *kv):
        from transformers import DynamicCache

        pairs = [(kv[i], kv[i + 1]) for i in range(0, len(kv), 2)]
        cache = DynamicCache(pairs, config=self.model.config)
        # transformers 5.24 names the argument and the output field ``cache`` (``past_key_values``
        # before, deprecated now); the cache's write position follows from its length
        out = self.model(input_ids=input_ids, position_ids=position.unsqueeze(0), cache=cache,
                         use_cache=True, return_dict=True)
        new = []
        for layer in out.cache.layers:
            new += [layer.keys, layer.values]
        return (out.logits, *new)


# ---- encoders -----------------------------------------------------------------------------------

def build_bert(size: str = "bench"):
    """BERT encoder: 4 layers, hidden 512, 8 heads, 128 tokens (tiny: 2 layers, hidden 64, 16 tokens)."""
    from transformers import BertConfig, BertModel

    c = _pick(size, dict(layers=4, hidden=512, heads=8, seq=128), dict(layers=1, hidden=64, heads=4, seq=16))
    torch.manual_seed(0)
    config = BertConfig(vocab_size=8000, hidden_size=c["hidden"], num_hidden_layers=c["layers"],
                        num_attention_heads=c["heads"], intermediate_size=4 * c["hidden"],
                        max_position_embeddings=512, attn_implementation="sdpa")
    model = _ready(LastHidden(BertModel(config, add_pooling_layer=False), ("input_ids", "attention_mask")))
    g = torch.Generator().manual_seed(0)
    ids = _ids(g, config.vocab_size, 1, c["seq"])
    mask = torch.ones(1, c["seq"], dtype=torch.long)
    return model, (ids, mask)


def build_vit(size: str = "bench"):
    """ViT: 224x224 image, patch 16 (197 tokens), hidden 384, 6 heads, 4 layers (ViT-S-like, shallower)."""
    from transformers import ViTConfig, ViTModel

    c = _pick(size, dict(image=224, patch=16, hidden=384, heads=6, layers=4),
              dict(image=32, patch=8, hidden=64, heads=4, layers=1))
    torch.manual_seed(0)
    config = ViTConfig(image_size=c["image"], patch_size=c["patch"], hidden_size=c["hidden"],
                       num_hidden_layers=c["layers"], num_attention_heads=c["heads"],
                       intermediate_size=4 * c["hidden"], attn_implementation="sdpa")
    model = _ready(LastHidden(ViTModel(config, add_pooling_layer=False), ("pixel_values",)))
    return model, (torch.randn(1, 3, c["image"], c["image"], generator=torch.Generator().manual_seed(0)),)


def build_wav2vec2(size: str = "bench"):
    """Wav2Vec2 speech encoder: 1 s of 16 kHz audio (49 frames), hidden 256, 4 layers."""
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    c = _pick(size, dict(samples=16000, hidden=256, heads=4, layers=4, conv=256),
              dict(samples=1600, hidden=32, heads=2, layers=1, conv=32))
    torch.manual_seed(0)
    config = Wav2Vec2Config(hidden_size=c["hidden"], num_hidden_layers=c["layers"],
                            num_attention_heads=c["heads"], intermediate_size=4 * c["hidden"],
                            conv_dim=(c["conv"],) * 7, num_conv_pos_embeddings=32,
                            num_conv_pos_embedding_groups=4, mask_time_prob=0.0,
                            attn_implementation="sdpa")
    model = _ready(LastHidden(Wav2Vec2Model(config), ("input_values",)))
    return model, (torch.randn(1, c["samples"], generator=torch.Generator().manual_seed(0)),)


# ---- decoders -----------------------------------------------------------------------------------

def _llama_config(size: str):
    from transformers import LlamaConfig

    c = _pick(size, dict(hidden=512, layers=4, heads=8, kv=2, ff=1408, vocab=8000),
              dict(hidden=64, layers=1, heads=4, kv=2, ff=128, vocab=256))
    return LlamaConfig(vocab_size=c["vocab"], hidden_size=c["hidden"], intermediate_size=c["ff"],
                       num_hidden_layers=c["layers"], num_attention_heads=c["heads"],
                       num_key_value_heads=c["kv"], max_position_embeddings=1024,
                       attn_implementation="sdpa")


def build_llama_prefill(size: str = "bench"):
    """Llama-style decoder with grouped-query attention (8 query heads, 2 KV heads), hidden 512,
    4 layers, a 128-token prompt, no cache (use_cache=False); returns the logits."""
    from transformers import LlamaForCausalLM

    seq = 128 if size == "bench" else 16
    torch.manual_seed(0)
    config = _llama_config(size)
    model = _ready(Logits(LlamaForCausalLM(config)))
    return model, (_ids(torch.Generator().manual_seed(0), config.vocab_size, 1, seq),)


def build_llama_decode(size: str = "bench"):
    """The same Llama, one decode step after a 127-token context: the KV cache goes in and the
    updated one comes out as plain tensors (see DecodeStep)."""
    from transformers import LlamaForCausalLM

    past = 127 if size == "bench" else 15
    torch.manual_seed(0)
    config = _llama_config(size)
    model = _ready(DecodeStep(LlamaForCausalLM(config)))
    g = torch.Generator().manual_seed(0)
    head_dim = config.hidden_size // config.num_attention_heads
    kv = []
    for _ in range(config.num_hidden_layers):
        kv += [torch.randn(1, config.num_key_value_heads, past, head_dim, generator=g) for _ in range(2)]
    return model, (_ids(g, config.vocab_size, 1, 1), torch.tensor([past]), *kv)


def build_gpt2(size: str = "bench"):
    """GPT-2: 4 layers, hidden 512, 8 heads, 128 tokens; returns the LM logits."""
    from transformers import GPT2Config, GPT2LMHeadModel

    c = _pick(size, dict(hidden=512, layers=4, heads=8, seq=128, vocab=8000),
              dict(hidden=64, layers=1, heads=4, seq=16, vocab=256))
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=c["vocab"], n_positions=512, n_embd=c["hidden"], n_layer=c["layers"],
                        n_head=c["heads"], attn_implementation="sdpa")
    model = _ready(Logits(GPT2LMHeadModel(config)))
    return model, (_ids(torch.Generator().manual_seed(0), c["vocab"], 1, c["seq"]),)


def build_t5(size: str = "bench"):
    """T5 encoder-decoder (small-config: d_model 256, 4+4 layers, 4 heads), 64 source tokens, and
    one decoder step (one target token, no cache); returns the decoder's last hidden state."""
    from transformers import T5Config, T5Model

    c = _pick(size, dict(d=256, layers=4, heads=4, ff=1024, seq=64, vocab=8000),
              dict(d=32, layers=1, heads=2, ff=64, seq=12, vocab=256))
    torch.manual_seed(0)
    config = T5Config(vocab_size=c["vocab"], d_model=c["d"], d_kv=c["d"] // c["heads"], d_ff=c["ff"],
                      num_layers=c["layers"], num_decoder_layers=c["layers"], num_heads=c["heads"],
                      use_cache=False, decoder_start_token_id=0, pad_token_id=0)
    model = _ready(LastHidden(T5Model(config), ("input_ids", "decoder_input_ids")))
    g = torch.Generator().manual_seed(0)
    return model, (_ids(g, c["vocab"], 1, c["seq"]), torch.zeros(1, 1, dtype=torch.long))


# ---- vision CNNs --------------------------------------------------------------------------------

def build_resnet(size: str = "bench"):
    """ResNet-18-like (basic blocks, depths 2-2-2-2, widths 64-512), a 224x224 image."""
    from transformers import ResNetConfig, ResNetModel

    c = _pick(size, dict(image=224, widths=[64, 128, 256, 512], depths=[2, 2, 2, 2], stem=64),
              dict(image=32, widths=[8, 16], depths=[1, 1], stem=8))
    torch.manual_seed(0)
    config = ResNetConfig(embedding_size=c["stem"], hidden_sizes=c["widths"], depths=c["depths"],
                          layer_type="basic")
    model = _ready(LastHidden(ResNetModel(config), ("pixel_values",)))
    return model, (torch.randn(1, 3, c["image"], c["image"], generator=torch.Generator().manual_seed(0)),)


def build_convnext(size: str = "bench"):
    """ConvNeXt, tiny-like but narrower (widths 48-96-192-384, depths 2-2-6-2), a 224x224 image."""
    from transformers import ConvNextConfig, ConvNextModel

    c = _pick(size, dict(image=224, widths=[48, 96, 192, 384], depths=[2, 2, 6, 2]),
              dict(image=32, widths=[8, 16], depths=[1, 1]))
    torch.manual_seed(0)
    config = ConvNextConfig(hidden_sizes=c["widths"], depths=c["depths"], num_stages=len(c["depths"]))
    model = _ready(LastHidden(ConvNextModel(config), ("pixel_values",)))
    return model, (torch.randn(1, 3, c["image"], c["image"], generator=torch.Generator().manual_seed(0)),)


def build_mobilenet_v2(size: str = "bench"):
    """MobileNetV2 (width 1.0), a 224x224 image (tiny: width 0.35, 32x32)."""
    from transformers import MobileNetV2Config, MobileNetV2Model

    c = _pick(size, dict(image=224, width=1.0), dict(image=32, width=0.35))
    torch.manual_seed(0)
    config = MobileNetV2Config(image_size=c["image"], depth_multiplier=c["width"])
    backbone = _batchnorm_from_images(MobileNetV2Model(config, add_pooling_layer=False), c["image"])
    model = _ready(LastHidden(backbone, ("pixel_values",)))
    return model, (torch.randn(1, 3, c["image"], c["image"], generator=torch.Generator().manual_seed(0)),)


def build_mobilevit(size: str = "bench"):
    """MobileViT-S: MobileNetV2 blocks (depthwise convolutions) then three stages that mix
    convolutions with transformer layers over image patches, a 256x256 image (tiny: 64x64,
    narrower). A hybrid: the kind of model where runtimes might differ by op class."""
    from transformers import MobileViTConfig, MobileViTModel

    c = _pick(size, dict(image=256, hidden=[144, 192, 240], neck=[16, 32, 64, 96, 128, 160, 640]),
              dict(image=64, hidden=[16, 24, 32], neck=[8, 8, 16, 16, 24, 24, 32]))
    torch.manual_seed(0)
    config = MobileViTConfig(image_size=c["image"], hidden_sizes=c["hidden"], neck_hidden_sizes=c["neck"])
    backbone = _batchnorm_from_images(MobileViTModel(config, expand_output=True), c["image"])
    model = _ready(LastHidden(backbone, ("pixel_values",)))
    return model, (torch.randn(1, 3, c["image"], c["image"], generator=torch.Generator().manual_seed(0)),)


def _batchnorm_from_images(backbone: nn.Module, image: int) -> nn.Module:
    """transformers draws conv weights with std 0.02 and leaves BatchNorm at mean 0, variance 1 (an
    init for loading a checkpoint); through 50 convolutions that leaves activations near 1e-22,
    denormal in the tiny size (MobileViT also draws each BatchNorm's scale with std 0.02). Set each
    BatchNorm's statistics from a batch of random images, as training would, and its scale to 1,
    so activations stay O(1) as with trained weights."""
    g = torch.Generator().manual_seed(1)
    calibration = torch.randn(4, 3, image, image, generator=g)
    for module in backbone.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.momentum = 1.0
            with torch.no_grad():
                module.weight.fill_(1.0)
    with torch.no_grad():
        backbone.train()(pixel_values=calibration)
    return backbone


# ---- stock models, as users have them ----------------------------------------------------------
# The transformers classes themselves: called by keyword, returning a ModelOutput (last_hidden_state,
# logits, ...). hetcc compiles, saves and loads them as they are; a loaded bundle returns the same
# ModelOutput class when transformers is imported, and an equivalent hetcc Record otherwise.

def build_stock_bert(size: str = "bench"):
    """BertModel (with its pooler) called as ``model(input_ids=..., attention_mask=...)``."""
    from transformers import BertModel

    wrapped, (ids, mask) = build_bert(size)
    torch.manual_seed(0)
    return _ready(BertModel(wrapped.model.config)), {"input_ids": ids, "attention_mask": mask}


def build_stock_llama(size: str = "bench"):
    """LlamaForCausalLM over a whole prompt, called by keyword. Its config turns the cache off
    (``use_cache=False``): a returned DynamicCache is not a tensor structure torch.export can trace."""
    wrapped, (ids,) = build_llama_prefill(size)
    model = wrapped.model
    model.config.use_cache = False
    return model, {"input_ids": ids}


def build_stock_vit(size: str = "bench"):
    """ViTModel (with its pooler) called positionally with ``pixel_values``."""
    from transformers import ViTModel

    wrapped, inputs = build_vit(size)
    torch.manual_seed(0)
    return _ready(ViTModel(wrapped.model.config)), inputs


def build_stock_t5(size: str = "bench"):
    """T5Model (encoder-decoder, one decoder token), called by keyword."""
    wrapped, (ids, decoder_ids) = build_t5(size)
    return wrapped.model, {"input_ids": ids, "decoder_input_ids": decoder_ids}


# ---- inputs besides the examples ---------------------------------------------------------------

def like(inputs, n: int = 8, seed: int = 1) -> list:
    """``n`` inputs like ``inputs`` (a tuple, or a dict of keyword inputs), for compile(validation=...)
    or to check a compiled model on inputs it was not compiled with: float tensors drawn anew from a
    normal distribution, integer ones that vary (token ids) drawn anew between the example's smallest
    and largest value, constant ones (a mask of ones, a decoder's start token) kept."""
    g = torch.Generator().manual_seed(seed)

    def drawn(x):
        if x.is_floating_point():
            return torch.randn(x.shape, generator=g, dtype=x.dtype)
        low, high = int(x.min()), int(x.max())
        return x.clone() if low == high else torch.randint(low, high + 1, x.shape, generator=g, dtype=x.dtype)
    if isinstance(inputs, dict):
        return [{k: drawn(v) for k, v in inputs.items()} for _ in range(n)]
    return [tuple(drawn(x) for x in inputs) for _ in range(n)]


def validation_stock_t5(size: str = "bench"):
    """Eight inputs like build_stock_t5's: ``--validation examples/hf_models.py:validation_stock_t5``."""
    return like(build_stock_t5(size)[1])


def validation_stock_bert(size: str = "bench"):
    """Eight inputs like build_stock_bert's: ``--validation examples/hf_models.py:validation_stock_bert``."""
    return like(build_stock_bert(size)[1])


def calibration_stock_t5(size: str = "bench"):
    """Eight other inputs like build_stock_t5's, to fit int8 weights to (drawn apart from the
    validation ones): ``--calibration examples/hf_models.py:calibration_stock_t5``."""
    return like(build_stock_t5(size)[1], seed=2)


def calibration_stock_bert(size: str = "bench"):
    """Eight other inputs like build_stock_bert's: ``--calibration examples/hf_models.py:calibration_stock_bert``."""
    return like(build_stock_bert(size)[1], seed=2)


STOCK = {"bert": build_stock_bert, "llama": build_stock_llama, "vit": build_stock_vit, "t5": build_stock_t5}
"""family -> build function of an unwrapped transformers model."""


MODELS = {
    "bert": build_bert,
    "gpt2": build_gpt2,
    "llama_prefill": build_llama_prefill,
    "llama_decode": build_llama_decode,
    "t5": build_t5,
    "vit": build_vit,
    "wav2vec2": build_wav2vec2,
    "resnet": build_resnet,
    "convnext": build_convnext,
    "mobilenet_v2": build_mobilenet_v2,
    "mobilevit": build_mobilevit,
}
"""name -> build function; the order the benchmark runs them in."""


def build(name: str = "bert", size: str = "bench"):
    """``(model, example_inputs)`` of one of MODELS by name."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose from {', '.join(MODELS)}")
    return MODELS[name](size)


if __name__ == "__main__":
    import sys

    import hetcc

    for name in sys.argv[1:] or list(MODELS):
        model, inputs = build(name)
        compiled = hetcc.compile(model, inputs, targets=["openvino:cpu", "onnxruntime:cpu", "torch:cpu"])
        print(f"== {name}\n{compiled.plan.summary()}")
