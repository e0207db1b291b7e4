"""Generate the committed DINOv2/CLIP parity fixtures with transformers' PyTorch models.

Run once, in a Python 3.11 venv with the CPU build of torch (see docs/reference_facts.md#environment):
    python tools/make_encoder_fixtures.py tests/fixtures/encoders
Random weights from small configs (no download). Each case directory holds an HF-format
`config.json` + `model.safetensors` and `io.npz` (inputs and PyTorch outputs).
"""
import json
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from transformers import CLIPTextConfig, CLIPTextModel, Dinov2WithRegistersConfig, Dinov2WithRegistersModel


def _save(model, config, out: Path, **arrays):
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(config.to_dict(), indent=1, default=str))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out / "model.safetensors"))
    np.savez(out / "io.npz", **arrays)


def dinov2(out: Path):
    torch.manual_seed(0)
    cfg = Dinov2WithRegistersConfig(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=4, mlp_ratio=4, patch_size=14,
        image_size=56, num_register_tokens=4, layerscale_value=0.5,
    )
    model = Dinov2WithRegistersModel(cfg).eval()
    with torch.no_grad():  # non-trivial tokens everywhere (registers init to zero otherwise)
        model.embeddings.register_tokens.normal_(0, 0.5)
        model.embeddings.cls_token.normal_(0, 0.5)
        for layer in model.encoder.layer:
            layer.layer_scale1.lambda1.uniform_(0.5, 1.5)
            layer.layer_scale2.lambda1.uniform_(0.5, 1.5)
            for n in (layer.norm1, layer.norm2):
                n.weight.uniform_(0.5, 1.5)
                n.bias.normal_(0, 0.1)
    pixels = torch.randn(2, 3, 56, 56)
    with torch.no_grad():
        o = model(pixel_values=pixels, output_hidden_states=True)
    prenorm = o.hidden_states[-1]
    assert torch.allclose(model.layernorm(prenorm), o.last_hidden_state, atol=1e-6)
    _save(model, cfg, out, pixels_nhwc=pixels.permute(0, 2, 3, 1).numpy(), x_prenorm=prenorm.numpy(),
          last_hidden_state=o.last_hidden_state.numpy())


def clip_text(out: Path):
    torch.manual_seed(1)
    cfg = CLIPTextConfig(vocab_size=1000, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=77, hidden_act="quick_gelu")
    model = CLIPTextModel(cfg).eval()
    ids = torch.randint(0, 1000, (2, 77))
    with torch.no_grad():
        o = model(input_ids=ids)
    _save(model, cfg, out, input_ids=ids.numpy().astype(np.int32), last_hidden_state=o.last_hidden_state.numpy())


if __name__ == "__main__":
    root = Path(sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures/encoders")
    dinov2(root / "dinov2_reg_tiny")
    clip_text(root / "clip_text_tiny")
    print("wrote", root)
