"""Tiny random-weight vision-language checkpoints (Idefics3 / SmolVLM and InternVL, HF layout).

Written WITHOUT torch or transformers: the weights are numpy arrays saved with safetensors, and
config.json, the processor files (preprocessor_config.json, processor_config.json), the tokenizer
(tokenizer.json, tokenizer_config.json) and the chat template are written as the HF classes
save them (`Idefics3ForConditionalGeneration` / `InternVLForConditionalGeneration` with these
configs, `Idefics3Processor` + `Idefics3ImageProcessorPil`, `InternVLProcessor` +
`GotOcr2ImageProcessorPil`). So the same folder serves the non-heavy tests (converter, worker,
e2e in CI's py310 step without torch) and the heavy ones, where
`XForConditionalGeneration.from_pretrained(dir)` and `AutoProcessor.from_pretrained(dir)` load
it (tests/vision/test_vlm_numerics.py checks that they do, with no missing or unexpected keys).

Shapes: text model hidden 64, 2 layers, 4 heads (2 KV heads), ffn 128 (llama for idefics3,
qwen2 with q/k/v bias for internvl); vision tower hidden 32, 2 layers, 2 heads, mlp 64.
idefics3: tile 32 px, patch 8 (16 patches), scale_factor 2 -> 4 image tokens per tile; the
processor resizes the longest edge to 4 tiles (128 px) and splits into 32 px tiles plus a global
image. internvl: tile 28 px, patch 7 (16 patches + cls), downsample_ratio 0.5 -> 4 image tokens
per tile; dynamic tiling up to 12 tiles plus a thumbnail.
"""
from __future__ import annotations

import json
import pathlib
import sys

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from bpe_tokenizer import build_bpe_tokenizer  # noqa: E402

TEXT = ("The quick brown fox jumps over the lazy dog. Hello, world! How are you today? "
        "What is in this picture? Describe the image. A cat sits on a red mat near the window. "
        "Numbers like 12345 and 678 appear too. Small models are useful for tests of converters. ") * 20

TEXT_SHAPE = dict(hidden=64, layers=2, heads=4, kv_heads=2, head_dim=16, ffn=128)
VISION_SHAPE = dict(hidden=32, layers=2, heads=2, ffn=64)

IDEFICS3_TILE, IDEFICS3_PATCH, IDEFICS3_SCALE = 32, 8, 2
INTERNVL_TILE, INTERNVL_PATCH, INTERNVL_RATIO = 28, 7, 0.5
TOKENS_PER_TILE = 4          # both families: (tile/patch)^2 * ratio^2 = 16 / 4

IDEFICS3_SPECIALS = (["<fake_token_around_image>", "<image>", "<end_of_utterance>", "<global-img>"]
                     + [f"<row_{r}_col_{c}>" for r in range(1, 7) for c in range(1, 7)])
INTERNVL_SPECIALS = ["<img>", "</img>", "<IMG_CONTEXT>", "<video>"]

# SmolVLM's template shape: "User:<image>text<end_of_utterance>\nAssistant:"; an image part
# renders as "<image>" (the processor expands it), string content is accepted too.
IDEFICS3_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{ message['role'] | capitalize }}"
    "{% if message['content'] is string %}{{ ': ' + message['content'] }}"
    "{% else %}{% if message['content'][0]['type'] == 'image' %}{{ ':' }}{% else %}{{ ': ' }}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{ line['text'] }}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}{% endif %}"
    "<end_of_utterance>\n{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}")

# InternVL-hf's (Qwen2 chat) shape: an image part renders as "<IMG_CONTEXT>\n".
INTERNVL_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for content in message['content'] %}{% if content['type'] == 'image' %}{{ '<IMG_CONTEXT>\\n' }}"
    "{% elif content['type'] == 'video' %}{{ '<video>\\n' }}"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}{% endfor %}{% endif %}"
    "{{ '<|im_end|>\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")


def _tokenizer(specials: list[str]):
    from tokenizers import AddedToken

    tok = build_bpe_tokenizer(None, [TEXT], 320)
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    return tok


class _Rand:
    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed)

    def mat(self, n: int, k: int) -> np.ndarray:
        return self.rng.normal(0, 1 / np.sqrt(k), (n, k)).astype(np.float32)

    def norm(self, n: int) -> np.ndarray:
        return (1 + 0.1 * self.rng.standard_normal(n)).astype(np.float32)

    def bias(self, n: int, scale: float = 0.1) -> np.ndarray:
        return (scale * self.rng.standard_normal(n)).astype(np.float32)

    def normal(self, shape, scale: float = 1.0) -> np.ndarray:
        return (scale * self.rng.standard_normal(shape)).astype(np.float32)


def _text_weights(r: _Rand, prefix: str, vocab: int, bias: bool) -> dict[str, np.ndarray]:
    s = TEXT_SHAPE
    H, hd, nh, nkv, F = s["hidden"], s["head_dim"], s["heads"], s["kv_heads"], s["ffn"]
    w = {prefix + "embed_tokens.weight": r.normal((vocab, H)), prefix + "norm.weight": r.norm(H),
         "lm_head.weight": r.mat(vocab, H)}
    for i in range(s["layers"]):
        p = f"{prefix}layers.{i}."
        w[p + "input_layernorm.weight"] = r.norm(H)
        w[p + "post_attention_layernorm.weight"] = r.norm(H)
        w[p + "self_attn.q_proj.weight"] = r.mat(nh * hd, H)
        w[p + "self_attn.k_proj.weight"] = r.mat(nkv * hd, H)
        w[p + "self_attn.v_proj.weight"] = r.mat(nkv * hd, H)
        w[p + "self_attn.o_proj.weight"] = r.mat(H, nh * hd)
        w[p + "mlp.gate_proj.weight"] = r.mat(F, H)
        w[p + "mlp.up_proj.weight"] = r.mat(F, H)
        w[p + "mlp.down_proj.weight"] = r.mat(H, F)
        if bias:
            for n, d in (("q", nh * hd), ("k", nkv * hd), ("v", nkv * hd)):
                w[p + f"self_attn.{n}_proj.bias"] = r.bias(d)
    return w


def _text_config(arch: str, vocab: int, bos: int | None, eos: int | None) -> dict:
    s = TEXT_SHAPE
    cfg = {"model_type": arch, "hidden_size": s["hidden"], "num_hidden_layers": s["layers"],
           "num_attention_heads": s["heads"], "num_key_value_heads": s["kv_heads"], "head_dim": s["head_dim"],
           "intermediate_size": s["ffn"], "vocab_size": vocab, "max_position_embeddings": 1024,
           "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "hidden_act": "silu", "tie_word_embeddings": False,
           "attention_bias": False, "bos_token_id": bos, "eos_token_id": eos, "pad_token_id": None,
           "torch_dtype": "float32"}
    if arch == "qwen2":
        cfg.update(use_sliding_window=False, sliding_window=None, max_window_layers=s["layers"])
    return cfg


def _stops(tok, eos: str) -> list[int]:
    """generate's end tokens: the family's eos plus the chat stop tokens npuflow's converter adds
    for a templated model (<|im_end|>, <|endoftext|>), so transformers' greedy answer ends where
    npuflow's does (the random model does emit them)."""
    return list(dict.fromkeys(tok.token_to_id(t) for t in (eos, "<|im_end|>", "<|endoftext|>")))


def _write_common(folder: pathlib.Path, tok, weights: dict, config: dict, tokenizer_config: dict,
                  template: str, preprocessor: dict, processor: dict, generation: dict) -> None:
    from safetensors.numpy import save_file

    folder.mkdir(parents=True, exist_ok=True)
    save_file(weights, str(folder / "model.safetensors"), metadata={"format": "pt"})
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    (folder / "generation_config.json").write_text(json.dumps(generation, indent=2))
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps(dict(tokenizer_config, chat_template=template), indent=2))
    (folder / "chat_template.jinja").write_text(template)
    (folder / "preprocessor_config.json").write_text(json.dumps(preprocessor, indent=2))
    (folder / "processor_config.json").write_text(json.dumps(processor, indent=2))


def build_tiny_idefics3(folder: str | pathlib.Path, seed: int = 0) -> pathlib.Path:
    """A tiny Idefics3 (SmolVLM-shaped) HF folder at `folder`; returns its path."""
    folder = pathlib.Path(folder)
    tok = _tokenizer(IDEFICS3_SPECIALS)
    vocab = tok.get_vocab_size()
    image_id = tok.token_to_id("<image>")
    bos, eos = tok.token_to_id("<|im_start|>"), tok.token_to_id("<end_of_utterance>")
    r = _Rand(seed)
    V = VISION_SHAPE
    D, F, P = V["hidden"], V["ffn"], IDEFICS3_PATCH
    n_pos = (IDEFICS3_TILE // P) ** 2
    w: dict[str, np.ndarray] = {
        "model.vision_model.embeddings.patch_embedding.weight": r.normal((D, 3, P, P), 1 / np.sqrt(3 * P * P)),
        "model.vision_model.embeddings.patch_embedding.bias": r.bias(D),
        "model.vision_model.embeddings.position_embedding.weight": r.normal((n_pos, D), 0.5),
        "model.vision_model.post_layernorm.weight": r.norm(D),
        "model.vision_model.post_layernorm.bias": r.bias(D),
        "model.connector.modality_projection.proj.weight": r.mat(TEXT_SHAPE["hidden"], D * IDEFICS3_SCALE ** 2),
    }
    for i in range(V["layers"]):
        p = f"model.vision_model.encoder.layers.{i}."
        for n in ("q_proj", "k_proj", "v_proj", "out_proj"):
            w[p + f"self_attn.{n}.weight"] = r.mat(D, D)
            w[p + f"self_attn.{n}.bias"] = r.bias(D)
        for n in ("layer_norm1", "layer_norm2"):
            w[p + f"{n}.weight"] = r.norm(D)
            w[p + f"{n}.bias"] = r.bias(D)
        w[p + "mlp.fc1.weight"], w[p + "mlp.fc1.bias"] = r.mat(F, D), r.bias(F)
        w[p + "mlp.fc2.weight"], w[p + "mlp.fc2.bias"] = r.mat(D, F), r.bias(D)
    w.update(_text_weights(r, "model.text_model.", vocab, bias=False))
    config = {
        "model_type": "idefics3", "architectures": ["Idefics3ForConditionalGeneration"],
        "image_token_id": image_id, "scale_factor": IDEFICS3_SCALE, "tie_word_embeddings": False,
        "use_cache": True, "torch_dtype": "float32",
        "vision_config": {"model_type": "idefics3_vision", "hidden_size": D, "intermediate_size": F,
                          "num_hidden_layers": V["layers"], "num_attention_heads": V["heads"], "num_channels": 3,
                          "image_size": IDEFICS3_TILE, "patch_size": P, "hidden_act": "gelu_pytorch_tanh",
                          "layer_norm_eps": 1e-6},
        "text_config": _text_config("llama", vocab, bos, eos),
    }
    preprocessor = {
        "image_processor_type": "Idefics3ImageProcessor", "processor_class": "Idefics3Processor",
        "do_convert_rgb": True, "do_resize": True, "size": {"longest_edge": 4 * IDEFICS3_TILE},
        "resample": 1, "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
        "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5], "do_pad": True,
        "do_image_splitting": True, "max_image_size": {"longest_edge": IDEFICS3_TILE},
    }
    processor = {"processor_class": "Idefics3Processor", "image_seq_len": TOKENS_PER_TILE}
    tcfg = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<|im_start|>",
            "eos_token": "<end_of_utterance>", "pad_token": "<|endoftext|>", "unk_token": "<|endoftext|>",
            "add_bos_token": False, "add_eos_token": False, "model_max_length": 1024,
            "processor_class": "Idefics3Processor"}
    _write_common(folder, tok, w, config, tcfg, IDEFICS3_TEMPLATE, preprocessor, processor,
                  {"bos_token_id": bos, "eos_token_id": _stops(tok, "<end_of_utterance>"),
                   "pad_token_id": tok.token_to_id("<|endoftext|>")})
    return folder


def build_tiny_internvl(folder: str | pathlib.Path, seed: int = 1) -> pathlib.Path:
    """A tiny InternVL (InternVL3-hf-shaped) HF folder at `folder`; returns its path."""
    folder = pathlib.Path(folder)
    tok = _tokenizer(INTERNVL_SPECIALS)
    vocab = tok.get_vocab_size()
    image_id = tok.token_to_id("<IMG_CONTEXT>")
    eos = tok.token_to_id("<|im_end|>")
    r = _Rand(seed)
    V = VISION_SHAPE
    D, F, P = V["hidden"], V["ffn"], INTERNVL_PATCH
    n_patch = (INTERNVL_TILE // P) ** 2
    proj_in = int(D / INTERNVL_RATIO ** 2)
    H = TEXT_SHAPE["hidden"]
    pv = "model.vision_tower."
    w: dict[str, np.ndarray] = {
        pv + "embeddings.cls_token": r.normal((1, 1, D), 0.5),
        pv + "embeddings.position_embeddings": r.normal((1, n_patch + 1, D), 0.5),
        pv + "embeddings.patch_embeddings.projection.weight": r.normal((D, 3, P, P), 1 / np.sqrt(3 * P * P)),
        pv + "embeddings.patch_embeddings.projection.bias": r.bias(D),
        "model.multi_modal_projector.layer_norm.weight": r.norm(proj_in),
        "model.multi_modal_projector.layer_norm.bias": r.bias(proj_in),
        "model.multi_modal_projector.linear_1.weight": r.mat(H, proj_in),
        "model.multi_modal_projector.linear_1.bias": r.bias(H),
        "model.multi_modal_projector.linear_2.weight": r.mat(H, H),
        "model.multi_modal_projector.linear_2.bias": r.bias(H),
    }
    for i in range(V["layers"]):
        p = f"{pv}encoder.layer.{i}."
        w[p + "lambda_1"] = (0.5 + 0.1 * r.rng.standard_normal(D)).astype(np.float32)
        w[p + "lambda_2"] = (0.5 + 0.1 * r.rng.standard_normal(D)).astype(np.float32)
        for n in ("q_proj", "k_proj", "v_proj"):
            w[p + f"attention.{n}.weight"] = r.mat(D, D)
        w[p + "attention.projection_layer.weight"] = r.mat(D, D)
        w[p + "attention.projection_layer.bias"] = r.bias(D)
        w[p + "mlp.fc1.weight"], w[p + "mlp.fc1.bias"] = r.mat(F, D), r.bias(F)
        w[p + "mlp.fc2.weight"], w[p + "mlp.fc2.bias"] = r.mat(D, F), r.bias(D)
        for n in ("layernorm_before", "layernorm_after"):
            w[p + f"{n}.weight"] = r.norm(D)
            w[p + f"{n}.bias"] = r.bias(D)
    w.update(_text_weights(r, "model.language_model.", vocab, bias=True))
    config = {
        "model_type": "internvl", "architectures": ["InternVLForConditionalGeneration"],
        "image_token_id": image_id, "image_seq_length": TOKENS_PER_TILE, "downsample_ratio": INTERNVL_RATIO,
        "projector_hidden_act": "gelu", "vision_feature_layer": -1, "vision_feature_select_strategy": "default",
        "tie_word_embeddings": False, "use_cache": True, "torch_dtype": "float32",
        "vision_config": {"model_type": "internvl_vision", "hidden_size": D, "intermediate_size": F,
                          "num_hidden_layers": V["layers"], "num_attention_heads": V["heads"],
                          "attention_bias": False, "use_qk_norm": False, "hidden_act": "gelu",
                          "norm_type": "layer_norm", "layer_norm_eps": 1e-6,
                          "image_size": [INTERNVL_TILE, INTERNVL_TILE], "patch_size": [P, P], "num_channels": 3,
                          "use_mask_token": False, "use_absolute_position_embeddings": True,
                          "layer_scale_init_value": 0.1, "use_mean_pooling": True},
        "text_config": _text_config("qwen2", vocab, None, eos),
    }
    preprocessor = {
        "image_processor_type": "GotOcr2ImageProcessor", "processor_class": "InternVLProcessor",
        "crop_to_patches": True, "min_patches": 1, "max_patches": 12,
        "size": {"height": INTERNVL_TILE, "width": INTERNVL_TILE}, "do_resize": True, "resample": 3,
        "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
        "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225], "do_convert_rgb": True,
    }
    processor = {"processor_class": "InternVLProcessor", "image_seq_length": TOKENS_PER_TILE}
    tcfg = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": None, "eos_token": "<|im_end|>",
            "pad_token": "<|endoftext|>", "unk_token": None, "add_bos_token": False, "add_eos_token": False,
            "model_max_length": 1024, "processor_class": "InternVLProcessor",
            "extra_special_tokens": {"start_image_token": "<img>", "end_image_token": "</img>",
                                     "context_image_token": "<IMG_CONTEXT>", "video_token": "<video>"}}
    _write_common(folder, tok, w, config, tcfg, INTERNVL_TEMPLATE, preprocessor, processor,
                  {"eos_token_id": _stops(tok, "<|im_end|>"), "pad_token_id": tok.token_to_id("<|endoftext|>")})
    return folder


def load_hf_processor(folder: str | pathlib.Path):
    """The HF processor of a tiny folder (heavy tests only: imports transformers). idefics3:
    `AutoProcessor.from_pretrained`. internvl: AutoProcessor also loads InternVL's video
    processor, which needs torchvision (not installed here), so the processor is put together
    from the same files: GotOcr2ImageProcessorPil + the folder's tokenizer and template."""
    folder = pathlib.Path(folder)
    cfg = json.loads((folder / "config.json").read_text())
    if cfg["model_type"] != "internvl":
        from transformers import AutoProcessor
        return AutoProcessor.from_pretrained(folder)
    from transformers import AutoTokenizer, InternVLProcessor
    from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import GotOcr2ImageProcessorPil

    class _ImagesOnly(InternVLProcessor):      # no video processor: None passes the class check
        def check_argument_for_proper_class(self, name, arg):
            return None if arg is None else super().check_argument_for_proper_class(name, arg)

    pcfg = json.loads((folder / "processor_config.json").read_text())
    return _ImagesOnly(video_processor=None, image_processor=GotOcr2ImageProcessorPil.from_pretrained(folder),
                             tokenizer=AutoTokenizer.from_pretrained(folder),
                             image_seq_length=pcfg["image_seq_length"],
                             chat_template=(folder / "chat_template.jinja").read_text())


BUILDERS = {"idefics3": build_tiny_idefics3, "internvl": build_tiny_internvl}


def build_tiny_package(family: str, root: str | pathlib.Path) -> pathlib.Path:
    """For tests outside tests/vision (worker, tokenizer, e2e; no torch needed): the tiny HF
    folder of `family` at root/hf-<family>, converted with npuflow.convert.convert into the CPU
    package root/pkg-<family> (model id "tiny-<family>"); returns the package directory."""
    from npuflow.convert import convert

    root = pathlib.Path(root)
    hf = BUILDERS[family](root / f"hf-{family}")
    out = root / f"pkg-{family}"
    convert(hf, out, model_id=f"tiny-{family}", overwrite=True)
    return out
